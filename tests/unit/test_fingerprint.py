"""Training-set fingerprints change exactly when the rows do."""

import numpy as np
import pandas as pd

from mlplat.training.fingerprint import frame_fingerprint


def frame():
    return pd.DataFrame({
        "driver_id": np.arange(5), "rating": np.linspace(1, 5, 5, dtype="float32"),
        "trips": pd.array([1, None, 3, 4, 5], dtype="Int64"), "tier": ["a", "b", None, "a", "c"],
        "event_timestamp": pd.date_range("2026-01-01", periods=5, freq="h", tz="UTC"),
    })


def test_same_rows_same_fingerprint_whatever_the_index():
    assert frame_fingerprint(frame()) == frame_fingerprint(frame().set_axis(range(10, 15)))


def test_any_change_changes_it():
    base = frame_fingerprint(frame())
    changed = [
        frame().assign(rating=lambda f: f["rating"].where(f.index != 2, np.float32(3.0001))),
        frame().assign(trips=pd.array([1, 2, 3, 4, 5], dtype="Int64")),  # a null filled in
        frame().assign(tier=["a", "b", None, "a", "d"]),
        frame().assign(event_timestamp=lambda f: f["event_timestamp"] + pd.Timedelta(seconds=1)),
        frame().iloc[::-1].reset_index(drop=True),  # the same rows in another order
        frame().astype({"rating": "float64"}),  # the same values in another dtype
        frame().rename(columns={"tier": "level"}),
    ]
    assert len({base, *(frame_fingerprint(f) for f in changed)}) == len(changed) + 1
