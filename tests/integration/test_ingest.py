"""Ingest validates before writing, partitions by date, and is all-or-nothing."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlplat.errors import (
    DefinitionError,
    DtypeMismatch,
    FeatureViewNotFound,
    InvalidArgument,
    MissingColumnError,
    SchemaError,
)


def frame(**overrides):
    data = {
        "driver_id": [1, 2, 1],
        "event_timestamp": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 23:59", "2026-01-02 00:00"], utc=True),
        "rating": [4.5, 3.0, 4.0],
        "trips": [10, 3, 12],
    }
    data.update(overrides)
    return pd.DataFrame(data)


def stored_files(platform) -> list[Path]:
    root = Path(platform.settings.home) / "offline"
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def registered(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    return platform


def test_ingest_writes_one_parquet_file_per_date(registered):
    result = registered.features.ingest("driver_stats", frame())
    assert result.rows == 3 and result.version == 1
    files = stored_files(registered)
    assert [f.parent.name for f in files] == ["date=2026-01-01", "date=2026-01-02"]
    assert all(f.parent.parent.name == "v1" and not f.name.startswith(".") for f in files)
    table = pq.read_table(files[0])
    assert table.column("driver_id").to_pylist() == [1, 2]
    assert str(table.schema.field("rating").type) == "float"  # stored as the declared float32
    assert str(table.schema.field("event_timestamp").type) == "timestamp[ns, tz=UTC]"


def test_naive_timestamps_are_utc_and_extra_columns_are_dropped(registered):
    df = frame(event_timestamp=pd.to_datetime(["2026-01-01 10:00"] * 3), note=["a", "b", "c"])
    registered.features.ingest("driver_stats", df)
    table = pq.read_table(stored_files(registered)[0])
    assert "note" not in table.column_names
    assert table.column("event_timestamp")[0].as_py() == pd.Timestamp("2026-01-01 10:00", tz="UTC")


def test_integral_floats_with_gaps_fit_an_int_feature(registered):
    registered.features.ingest("driver_stats", frame(trips=[10.0, None, 12.0]))
    assert pq.read_table(stored_files(registered)[0]).column("trips").to_pylist() == [10, None]


@pytest.mark.parametrize("df, error, message", [
    (frame().drop(columns=["rating"]), MissingColumnError, "lacks column\\(s\\) 'rating'"),
    (frame().rename(columns={"rating": "ratng"}), MissingColumnError, "did you mean 'ratng'"),
    (frame().drop(columns=["event_timestamp"]), MissingColumnError, "'event_timestamp'"),
    (frame().drop(columns=["driver_id"]), MissingColumnError, "'driver_id'"),
    (frame(rating=["good", "bad", "ok"]), DtypeMismatch, "driver_stats:rating is declared float32"),
    (frame(trips=[1.5, 2.0, 3.0]), DtypeMismatch, "driver_stats:trips is declared int64 but some values do not fit"),
    (frame(event_timestamp=["2026-01-01"] * 3), DtypeMismatch, "not a timestamp; convert it with pd.to_datetime"),
    (frame(event_timestamp=pd.to_datetime(["2026-01-01", None, "2026-01-01"], utc=True)), SchemaError, "1 null value"),
    (frame(driver_id=[1.0, 2.0, 3.0]), DtypeMismatch, "join keys must be integers or strings"),
    (frame(driver_id=["a", None, "b"]), SchemaError, "Join key 'driver_id'.*null"),
    (42, SchemaError, "Expected a pandas DataFrame"),
])
def test_bad_data_is_refused_and_nothing_is_written(registered, df, error, message):
    with pytest.raises(error, match=message):
        registered.features.ingest("driver_stats", df)
    assert stored_files(registered) == []


def test_unknown_view(registered):
    with pytest.raises(FeatureViewNotFound, match="did you mean 'driver_stats'"):
        registered.features.ingest("driverstats", frame())


def test_a_failed_write_leaves_no_files(registered, second_write_fails):
    with pytest.raises(OSError, match="disk full"):
        registered.features.ingest("driver_stats", frame())  # two dates: the second file fails
    assert stored_files(registered) == []


def test_ingest_from_the_views_parquet_source(platform, driver, driver_stats, tmp_path):
    from dataclasses import replace

    source = tmp_path / "stats.parquet"
    frame().to_parquet(source)
    platform.features.apply([driver, replace(driver_stats, source=str(source))])
    assert platform.features.ingest("driver_stats").rows == 3
    platform.features.apply([replace(driver_stats, source=None)])
    with pytest.raises(DefinitionError, match="no source"):
        platform.features.ingest("driver_stats")


def test_a_backfill_window_from_a_csv_file(registered, tmp_path):
    frame().to_csv(tmp_path / "raw.csv", index=False)
    result = registered.features.ingest("driver_stats", tmp_path / "raw.csv", start="2026-01-01 12:00",
                                        end="2026-01-02")
    assert result.rows == 1  # [12:00, midnight): only the 23:59 row
    (written,) = stored_files(registered)
    assert pq.read_table(written).column("driver_id").to_pylist() == [2]
    with pytest.raises(InvalidArgument, match="end='soon' is not a date or time"):
        registered.features.ingest("driver_stats", frame(), end="soon")
    with pytest.raises(InvalidArgument, match="Cannot read .*missing.parquet for view 'driver_stats'"):
        registered.features.ingest("driver_stats", tmp_path / "missing.parquet")
    assert stored_files(registered) == [written]  # refused input wrote nothing
