"""Property-based tests (hypothesis) of ingest, push and online reads against the session's real Redis.

Every call either gives the right answer, computed here independently from what was accepted (a
dict of the rows, in pandas), or raises an MlplatError and stores nothing; the stored row count
always equals what was accepted. Batches mix clean rows with garbage (missing, float, string and
out-of-range keys, times out of range, surrogates, integers beyond int64), and reads mix real keys
with keys that can never name an entity.
"""

from __future__ import annotations

import itertools
import math
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlplat
from mlplat.errors import EntityKeyError, MlplatError
from mlplat.features import Entity, FeatureView, Field

NOW = pd.Timestamp.now(tz="UTC").floor("s")
DRIVER = Entity("driver", join_keys=["driver_id"])
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
names = (f"prop_{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def p(tmp_path_factory, redis_url):
    platform = mlplat.connect(home=str(tmp_path_factory.mktemp("properties")), online_store=redis_url,
                              online_prefix=f"t{uuid.uuid4().hex[:10]}")
    platform.features.apply([DRIVER])
    yield platform
    platform.close()


SEED = {"driver_id": 0, "event_timestamp": NOW - pd.Timedelta(days=4), "trips": 1, "city": "x", "rating": 1.0}


def fresh_view(p) -> FeatureView:
    """A new view for each example, its int64 key kind fixed by one first row (``SEED``)."""
    view = FeatureView(next(names), entities=[DRIVER],
                       schema=[Field("rating", "float32"), Field("trips", "int64"), Field("city", "string")])
    p.features.apply([view])
    p.features.ingest(view.name, frame([SEED]))
    return p.features.get_view(view.name)


@pytest.fixture(scope="module")
def seeded(p) -> FeatureView:
    """A view whose only entity online is driver 0, with trips == 1."""
    view = fresh_view(p)
    p.features.materialize(views=[view.name])
    return view


# -- what a batch holds, and whether it may be stored ---------------------------------------------------------
GOOD_KEYS = st.integers(0, 6)
BAD_KEYS = st.sampled_from([None, 1.5, "3", 2**70])  # "3": the view's keys are int64
GOOD_TIMES = st.integers(60, 3 * 86_400).map(lambda s: NOW - pd.Timedelta(seconds=s))
BAD_TIMES = st.sampled_from([pd.Timestamp("3000-01-01", tz="UTC"), None])
GOOD_TEXT = st.one_of(st.none(), st.text(max_size=5))
BAD_TEXT = st.just("bad \ud800 text")
GOOD_TRIPS = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
BAD_TRIPS = st.just(2**64)
RATINGS = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def rows(draw, bad: bool):
    """One row: with ``bad``, one of its fields drawn from garbage."""
    field = draw(st.sampled_from(["driver_id", "event_timestamp", "trips", "city"])) if bad else None
    pick = {"driver_id": (GOOD_KEYS, BAD_KEYS), "event_timestamp": (GOOD_TIMES, BAD_TIMES),
            "trips": (GOOD_TRIPS, BAD_TRIPS), "city": (GOOD_TEXT, BAD_TEXT)}
    row = {name: draw(bad_one if name == field else good) for name, (good, bad_one) in pick.items()}
    return {**row, "rating": draw(RATINGS)}


@st.composite
def batches(draw):
    """(rows, clean): a few rows, now and then one of them garbage."""
    clean = draw(st.lists(rows(bad=False), min_size=1, max_size=6))
    if draw(st.integers(0, 3)):
        return clean, True
    position = draw(st.integers(0, len(clean)))
    return clean[:position] + [draw(rows(bad=True))] + clean[position:], False


TYPES = {"driver_id": "int64", "trips": "Int64", "rating": "float64"}  # what a careful user builds


def frame(batch: list[dict]) -> pd.DataFrame:
    """The rows as a user builds them: typed columns, or what pandas makes of values that do not fit."""
    out = {}
    for name in batch[0]:
        values = [row[name] for row in batch]
        numbers = all(v is None or type(v) in (int, float) for v in values)  # pandas would parse '3' as 3
        for dtype in (TYPES.get(name) if numbers else None, None, object):
            try:
                out[name] = pd.Series(values, dtype=dtype)
                break
            except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                continue
    return pd.DataFrame(out)


def expected_latest(accepted: list[dict]) -> dict[int, dict]:
    """Per entity, the row an online read must give: the newest event, the last accepted among equals."""
    latest: dict[int, dict] = {}
    for row in accepted:
        old = latest.get(row["driver_id"])
        if old is None or row["event_timestamp"] >= old["event_timestamp"]:
            latest[row["driver_id"]] = row
    return latest


def stored_rows(p, view: FeatureView) -> int:
    return p.features.offline.read(view, [view.timestamp_field]).num_rows


def online_keys(p, view: FeatureView) -> int:
    return len(list(p.features.online.client.scan_iter(match=p.features.online.key_prefix(view) + "*")))


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["ingest", "push"]), batches()), min_size=1, max_size=4),
       reads=st.lists(st.one_of(GOOD_KEYS, st.integers(100, 200), st.sampled_from(
           [None, math.nan, math.inf, 1.0, 1e39, "1", b"1", [1], True, 2**70])), min_size=1, max_size=8))
def test_ingest_push_and_reads_give_the_right_answer_or_an_mlplat_error(p, ops, reads):
    view = fresh_view(p)
    accepted: list[dict] = [SEED]
    for how, (batch, clean) in ops:
        try:
            getattr(p.features, how)(view.name, frame(batch))
        except MlplatError:
            assert not clean, f"a clean batch was refused: {batch}"
        else:
            assert clean, f"garbage was stored: {batch}"
            accepted += batch
        assert stored_rows(p, view) == len(accepted)
    p.features.materialize(views=[view.name])
    latest = expected_latest(accepted)
    assert online_keys(p, view) == len(latest)

    wanted = [f"{view.name}:rating", f"{view.name}:trips", f"{view.name}:city"]
    valid = all(type(k) is int and k < 2**63 for k in reads)
    try:
        got = p.features.get_online_features(wanted, {"driver_id": reads}).to_dict()
    except EntityKeyError:
        assert not valid
        return
    assert valid, f"keys that cannot name an entity were read: {reads}"
    for name in ("trips", "city"):
        assert got[name] == [latest[k][name] if k in latest else None for k in reads]
    assert got["rating"] == [None if k not in latest or latest[k]["rating"] is None
                             else float(np.float32(latest[k]["rating"])) for k in reads]


ANYTHING = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)
KEY_COLUMNS = st.sampled_from(["driver_id", "customer_id", ""])


@SETTINGS
@given(entity_rows=st.one_of(
    ANYTHING,
    st.lists(st.dictionaries(KEY_COLUMNS, st.one_of(GOOD_KEYS, ANYTHING), max_size=2), max_size=4),
    st.dictionaries(KEY_COLUMNS, st.one_of(st.lists(st.one_of(GOOD_KEYS, ANYTHING), max_size=4), ANYTHING),
                    max_size=2)))
def test_online_reads_of_any_entity_rows_answer_or_raise_an_mlplat_error(p, seeded, entity_rows):
    try:
        got = p.features.get_online_features([f"{seeded.name}:trips"], entity_rows).to_dict()
    except MlplatError:
        return
    keys = got["driver_id"]
    assert all(type(k) is int for k in keys)
    assert got["trips"] == [1 if k == 0 else None for k in keys]
    assert all(len(column) == len(keys) for column in got.values())
