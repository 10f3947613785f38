"""Batch feature views: a transformation (Python or SQL) computed partition by partition into the offline store,
resumable, idempotent per partition, checked against the view, scheduled as a notebook job."""

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplat.errors import InvalidArgument, TransformationError
from mlplat.features import Entity, Field
from mlplat.features.compute import BatchFeatureView
from mlplat.features.definitions import FeatureView, diff_views
from mlplat.features.quality import QuarantineWarning
from mlplat.jobs.scheduler import Scheduler

FIRST = pd.Timestamp("2024-03-01", tz="UTC")
US = pd.Timedelta(1, "us")
SCHEMA = [Field("trips", "int64"), Field("revenue", "float64")]
FAIL_DAY = "COMPUTE_TEST_FAIL_DAY"  # not MLPLAT_*: settings read those


def trips(days=4, drivers=20, per_day=200, first=FIRST, seed=0):
    """Raw trip events: a driver, a pickup time, a fare and a distance."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    offsets = rng.integers(0, days * 86_400 * 10**6, n)  # microseconds
    frame = pd.DataFrame({
        "driver_id": rng.integers(1, drivers + 1, n).astype("int64"),
        "pickup_at": first + pd.to_timedelta(offsets, unit="us"),
        "fare": rng.gamma(2.0, 9.0, n).round(2),
        "distance_km": rng.gamma(2.0, 3.0, n),
    })
    return frame.sort_values("pickup_at", ignore_index=True)


def write_daily_files(frame, folder):
    """One Parquet file per day, as an upstream job would land them."""
    folder.mkdir(parents=True, exist_ok=True)
    for day, rows in frame.groupby(frame["pickup_at"].dt.strftime("%Y-%m-%d")):
        rows.to_parquet(folder / f"{day}.parquet", index=False)
    return str(folder / "*.parquet")


def daily_trips(trips, start, end):
    """Per driver and day: trips and revenue, stamped when the day closes."""
    import os

    if os.environ.get("COMPUTE_TEST_FAIL_DAY") == str(start.date()):
        raise RuntimeError("source outage")
    per_driver = trips.groupby("driver_id", as_index=False).agg(trips=("fare", "size"), revenue=("fare", "sum"))
    return per_driver.assign(event_timestamp=end - pd.Timedelta(1, "us"))


def expected_daily(frame, drivers=None):
    """The same features in plain pandas, over the whole range at once."""
    if drivers is not None:
        frame = frame[frame["driver_id"].isin(drivers)]
    day = frame["pickup_at"].dt.floor("D")
    out = (frame.assign(day=day).groupby(["driver_id", "day"], as_index=False)
           .agg(trips=("fare", "size"), revenue=("fare", "sum")))
    out["event_timestamp"] = (out.pop("day") + pd.Timedelta(days=1) - US).astype("datetime64[ns, UTC]")
    return ordered(out[["driver_id", "event_timestamp", "trips", "revenue"]])


def ordered(frame):
    return frame.sort_values(["driver_id", "event_timestamp"], ignore_index=True)


def stored(p, name, version=None):
    view = p.features.get_view(name, version)
    columns = [*view.join_keys, view.timestamp_field, *view.feature_names]
    return ordered(p.features.offline.read(view, columns).to_pandas())


def stored_files(p, name):
    return {f.path: os.stat(f.path).st_mtime_ns for f in p.features.offline.files(p.features.get_view(name))}


@pytest.fixture
def driver():
    return Entity("driver", join_keys=["driver_id"])


@pytest.fixture
def raw(tmp_path):
    frame = trips()
    return frame, write_daily_files(frame, tmp_path / "trips")


def python_view(driver, source, **options):
    return BatchFeatureView("driver_daily", entities=[driver], schema=SCHEMA, transformation=daily_trips,
                            sources=source, source_timestamp_field="pickup_at", **options)


SQL = """
SELECT t.driver_id, $end - INTERVAL 1 MICROSECOND AS event_timestamp,
       count(*) AS trips, sum(t.fare) AS revenue
FROM trips t JOIN drivers d USING (driver_id)
WHERE d.active AND t.pickup_at >= $start AND t.pickup_at < $end
GROUP BY t.driver_id
"""


def test_a_python_transformation_computes_each_day_as_pandas_would(platform, driver, raw):
    frame, source = raw
    platform.features.apply([driver, python_view(driver, source)])

    result = platform.features.compute("driver_daily", "2024-03-01", "2024-03-05", progress=False)

    assert result.computed == ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    assert (result.skipped, result.rows) == ([], len(expected_daily(frame)))
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"), expected_daily(frame))
    assert list(platform.features.partitions("driver_daily")["status"]) == ["succeeded"] * 4
    entry = platform.audit.entries(kind="feature_view", obj="driver_daily", action="computed")[-1]
    assert (entry.version, entry.detail["partitions"], entry.detail["rows"]) == ("1", 4, result.rows)


def test_a_sql_transformation_joins_parquet_and_csv_sources(platform, driver, raw, tmp_path):
    frame, source = raw
    pd.DataFrame({"driver_id": range(1, 21), "active": [i % 3 != 0 for i in range(1, 21)]}).to_csv(
        tmp_path / "drivers.csv", index=False)
    view = BatchFeatureView("driver_daily_sql", entities=[driver], schema=SCHEMA, transformation=SQL,
                            sources={"trips": source, "drivers": str(tmp_path / "drivers.csv")})
    platform.features.apply([driver, view])

    result = platform.features.compute("driver_daily_sql", "2024-03-02", "2024-03-04", progress=False)

    active = [i for i in range(1, 21) if i % 3 != 0]
    window = frame[(frame["pickup_at"] >= FIRST + pd.Timedelta(days=1)) & (frame["pickup_at"] < FIRST + pd.Timedelta(days=3))]
    assert result.computed == ["2024-03-02", "2024-03-03"]
    pd.testing.assert_frame_equal(stored(platform, "driver_daily_sql"), expected_daily(window, active))


def test_an_interrupted_backfill_resumes_with_only_the_failed_partition(platform, driver, raw, monkeypatch):
    frame, source = raw
    platform.features.apply([driver, python_view(driver, source)])
    monkeypatch.setenv(FAIL_DAY, "2024-03-03")

    with pytest.raises(TransformationError) as failed:
        platform.features.compute("driver_daily", "2024-03-01", "2024-03-05", progress=False)

    message = str(failed.value)
    assert "failed in 1 of 4 partition(s): 2024-03-03: RuntimeError: source outage" in message
    assert "p.features.compute('driver_daily', '2024-03-01', '2024-03-05') again" in message
    assert failed.value.failed == {"2024-03-03": "RuntimeError: source outage"}
    table = platform.features.partitions("driver_daily")
    assert dict(zip(table["partition"], table["status"])) == {
        "2024-03-01": "succeeded", "2024-03-02": "succeeded", "2024-03-03": "failed", "2024-03-04": "succeeded"}
    assert "RuntimeError: source outage" in table["error"][2] and "Traceback" in table["error"][2]
    good_days = frame[frame["pickup_at"].dt.strftime("%Y-%m-%d") != "2024-03-03"]
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"), expected_daily(good_days))
    files, finished = stored_files(platform, "driver_daily"), table.set_index("partition")["finished_at"]

    monkeypatch.delenv(FAIL_DAY)
    result = platform.features.compute("driver_daily", "2024-03-01", "2024-03-05", progress=False)

    assert result.computed == ["2024-03-03"]
    assert result.skipped == ["2024-03-01", "2024-03-02", "2024-03-04"]
    after = platform.features.partitions("driver_daily").set_index("partition")
    assert set(after["status"]) == {"succeeded"}
    assert (after["finished_at"].drop("2024-03-03") == finished.drop("2024-03-03")).all()  # not recomputed
    assert files.items() <= stored_files(platform, "driver_daily").items()  # the same files, untouched
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"), expected_daily(frame))


def test_recomputing_with_force_replaces_a_partition_and_duplicates_nothing(platform, driver, raw):
    frame, source = raw
    platform.features.apply([driver, python_view(driver, source)])
    platform.features.compute("driver_daily", "2024-03-01", "2024-03-03", progress=False)
    before = stored_files(platform, "driver_daily")

    again = platform.features.compute("driver_daily", "2024-03-01", "2024-03-03", progress=False)
    assert (again.computed, again.skipped) == ([], ["2024-03-01", "2024-03-02"])

    corrected = frame.assign(fare=frame["fare"] * 2)  # a corrected upstream, given as a DataFrame
    redone = platform.features.compute("driver_daily", "2024-03-02", "2024-03-03", force=True,
                                       sources=corrected, progress=False)

    assert redone.computed == ["2024-03-02"]
    day = frame["pickup_at"].dt.strftime("%Y-%m-%d")
    expected = pd.concat([frame[day == "2024-03-01"], corrected[day == "2024-03-02"]])
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"), expected_daily(expected))
    after = stored_files(platform, "driver_daily")
    assert len(after) == len(before) == 2
    assert [p for p in before if "2024-03-01" in p] == [p for p in after if "2024-03-01" in p]


def test_a_lookback_gives_a_rolling_feature_its_history(platform, driver, raw):
    frame, source = raw

    def rolling_trips(trips, start, end):
        days = trips.assign(day=trips["pickup_at"].dt.floor("D")).groupby(["driver_id", "day"]).size()
        rolled = (days.unstack(fill_value=0).T.asfreq("D", fill_value=0).rolling(2, min_periods=1).sum()
                  .T.stack().rename("trips_2d").reset_index())
        rolled["event_timestamp"] = rolled.pop("day") + pd.Timedelta(days=1) - pd.Timedelta(1, "us")
        return rolled.astype({"trips_2d": "int64"})

    view = BatchFeatureView("driver_rolling", entities=[driver], schema=[Field("trips_2d", "int64")],
                            transformation=rolling_trips, sources=source, source_timestamp_field="pickup_at",
                            lookback=timedelta(days=1))
    platform.features.apply([driver, view])
    platform.features.compute("driver_rolling", "2024-03-02", "2024-03-04", progress=False)

    per_day = frame.assign(day=frame["pickup_at"].dt.floor("D")).groupby(["driver_id", "day"]).size()
    two_days = per_day.unstack(fill_value=0).T.rolling(2, min_periods=1).sum().T.stack()
    expected = two_days.rename("trips_2d").reset_index()
    expected = expected[expected["day"].isin(pd.to_datetime(["2024-03-02", "2024-03-03"], utc=True))]
    expected["event_timestamp"] = (expected.pop("day") + pd.Timedelta(days=1) - US).astype("datetime64[ns, UTC]")
    expected = ordered(expected[["driver_id", "event_timestamp", "trips_2d"]].astype({"trips_2d": "int64"}))
    pd.testing.assert_frame_equal(stored(platform, "driver_rolling"), expected)


def missing_column(trips, end):
    return pd.DataFrame({"driver_id": [1], "event_timestamp": [end - pd.Timedelta(1, "us")], "trips": [1]})


def extra_column(trips, end):
    return pd.DataFrame({"driver_id": [1], "event_timestamp": [end - pd.Timedelta(1, "us")], "trips": [1],
                         "revenue": [1.0], "city": ["paris"]})


def wrong_dtype(trips, end):
    return pd.DataFrame({"driver_id": [1], "event_timestamp": [end - pd.Timedelta(1, "us")], "trips": [1],
                         "revenue": ["12.5"]})


def outside_partition(trips, end):
    return pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [end - pd.Timedelta(1, "us"), end],
                         "trips": [1, 2], "revenue": [1.0, 2.0]})


@pytest.mark.parametrize(("transformation", "says"), [
    (missing_column, "returned the wrong columns: it lacks ['revenue']. It must return exactly the view's join keys, "
                     "timestamp and features, ['driver_id', 'event_timestamp', 'trips', 'revenue']"),
    (extra_column, "returned the wrong columns: it has undeclared ['city']"),
    (wrong_dtype, "returned the wrong type: Feature bad:revenue is declared float64 but the data has type"),
    (outside_partition, "returned 1 row(s) with event_timestamp outside the partition [2024-03-01 00:00:00+00:00, "
                        "2024-03-02 00:00:00+00:00), e.g. 2024-03-02 00:00:00+00:00"),
])
def test_a_transformation_returning_the_wrong_schema_is_a_clear_error(platform, driver, raw, transformation, says):
    view = BatchFeatureView("bad", entities=[driver], schema=SCHEMA, transformation=transformation,
                            sources=raw[1], source_timestamp_field="pickup_at")
    platform.features.apply([driver, view])

    with pytest.raises(TransformationError) as failed:
        platform.features.compute("bad", "2024-03-01", "2024-03-02", progress=False)

    assert "failed in 1 of 1 partition(s): 2024-03-01: The transformation of feature view 'bad' " + says \
        in str(failed.value)
    assert platform.features.offline.files(platform.features.get_view("bad")) == []
    assert list(platform.features.partitions("bad")["status"]) == ["failed"]


def test_computed_rows_are_screened_by_the_views_expectations_as_ingest_does(platform, driver, raw):
    frame, source = raw
    strict = [Field("trips", "int64", max=12), Field("revenue", "float64")]
    view = BatchFeatureView("driver_daily", entities=[driver], schema=strict, transformation=daily_trips,
                            sources=source, source_timestamp_field="pickup_at", on_violation="quarantine")
    platform.features.apply([driver, view])

    with pytest.warns(QuarantineWarning, match=r"computed row\(s\) of 'driver_daily' broke its expectations"):
        result = platform.features.compute("driver_daily", "2024-03-01", "2024-03-03", progress=False)

    expected = expected_daily(frame[frame["pickup_at"] < FIRST + pd.Timedelta(days=2)])
    assert 0 < result.quarantined == (expected["trips"] > 12).sum()
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"),
                                  expected[expected["trips"] <= 12].reset_index(drop=True))
    assert len(platform.features.quarantine("driver_daily")) == result.quarantined


def test_bounds_must_fall_on_partitions_and_plain_views_have_nothing_to_compute(platform, driver, raw):
    platform.features.apply([driver, python_view(driver, raw[1]),
                             FeatureView("plain", entities=[driver], schema=SCHEMA)])
    with pytest.raises(InvalidArgument, match=r"start 2024-03-01 12:00:00\+00:00 is not on a partition boundary; "
                                              r".* e.g. 2024-03-01 00:00:00\+00:00 or 2024-03-02 00:00:00\+00:00"):
        platform.features.compute("driver_daily", "2024-03-01 12:00", "2024-03-03")
    with pytest.raises(InvalidArgument, match="'plain' is a feature view without a transformation"):
        platform.features.compute("plain", "2024-03-01", "2024-03-03")
    edited = dataclasses.replace(python_view(driver, raw[1]), transformation="SELECT 1")
    with pytest.raises(InvalidArgument, match="differs from its registered definition .v1.; apply it first"):
        platform.features.compute(edited, "2024-03-01", "2024-03-03")


def test_batch_views_round_trip_through_the_registry(platform, driver, raw):
    sql_view = BatchFeatureView("driver_daily_sql", entities=[driver], schema=SCHEMA, transformation=SQL,
                                sources={"trips": raw[1], "drivers": "drivers.csv"}, schedule="0 2 * * *")
    platform.features.apply([driver, python_view(driver, raw[1], lookback=timedelta(hours=6)), sql_view])

    python_back, sql_back = (platform.features.get_view(n) for n in ("driver_daily", "driver_daily_sql"))
    assert isinstance(python_back, BatchFeatureView) and isinstance(sql_back, BatchFeatureView)
    assert python_back.to_dict() == dataclasses.replace(python_view(driver, raw[1], lookback=timedelta(hours=6)),
                                                        version=1, owner=python_back.owner,
                                                        team=python_back.team).to_dict()
    assert (sql_back.transformation, sql_back.sources, sql_back.schedule) == (SQL, sql_view.sources, "0 2 * * *")
    day = trips(days=1)
    pd.testing.assert_frame_equal(python_back.transformation(day, start=FIRST, end=FIRST + pd.Timedelta(days=1)),
                                  daily_trips(day, start=FIRST, end=FIRST + pd.Timedelta(days=1)))

    # a function that cannot be imported where the view is loaded runs from its recorded source
    spec = python_back.to_dict()
    spec["transformation"]["python"]["module"] = "not_importable_here"
    loaded = FeatureView.from_dict(spec)
    assert loaded.transformation is not daily_trips
    assert dataclasses.replace(loaded, description="edited").to_dict()["transformation"] == spec["transformation"]

    # a new transformation is a new version; new sources or a new schedule change the version in place
    def daily_trips_v2(trips, end):
        return daily_trips(trips, end=end, start=end)

    changed = platform.features.apply([dataclasses.replace(python_view(driver, raw[1], lookback=timedelta(hours=6)),
                                                           transformation=daily_trips_v2)])
    assert (changed[0].action, changed[0].version) == ("new_version", 2)
    assert changed[0].changes[0]["change"] == "transformation changed"
    moved = platform.features.apply([dataclasses.replace(sql_view, sources={"trips": "/new/*.parquet",
                                                                            "drivers": "drivers.csv"},
                                                         schedule="0 3 * * *")])
    assert (moved[0].action, moved[0].version) == ("updated", 1)
    assert {c["change"] for c in moved[0].changes} == {"sources changed", "schedule changed"}
    assert diff_views(sql_back, dataclasses.replace(sql_back, transformation=SQL + " LIMIT 5"))[0]["incompatible"]


def test_materialize_makes_the_computed_values_available_online(platform, driver, raw):
    frame, source = raw
    platform.features.apply([driver, python_view(driver, source)])

    result = platform.features.compute("driver_daily", "2024-03-01", "2024-03-05", materialize=True, progress=False)

    latest = expected_daily(frame).groupby("driver_id").last()
    assert result.materialized.written == len(latest)
    online = platform.features.get_online_features(["driver_daily:trips", "driver_daily:revenue"],
                                                   {"driver_id": latest.index.tolist()}).to_dict()
    assert online["trips"] == latest["trips"].tolist()
    np.testing.assert_allclose(online["revenue"], latest["revenue"])


def test_partitions_run_in_parallel_on_a_dask_cluster(platform, driver, tmp_path):
    frame = trips(days=6, per_day=300, seed=4)
    platform.features.apply([driver, python_view(driver, write_daily_files(frame, tmp_path / "trips"))])

    with platform.compute(workers=2, threads=1) as cluster:
        result = platform.features.compute("driver_daily", "2024-03-01", "2024-03-07", client=cluster.client,
                                           progress=False)

    assert result.computed == [f"2024-03-0{d}" for d in range(1, 7)]
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"), expected_daily(frame))


def test_without_bounds_compute_does_what_is_due(platform, driver, tmp_path):
    today = pd.Timestamp.now(tz="UTC").floor("D")
    frame = trips(days=3, first=today - pd.Timedelta(days=2))
    platform.features.apply([driver, python_view(driver, write_daily_files(frame, tmp_path / "trips"))])

    first = platform.features.compute("driver_daily", progress=False)
    again = platform.features.compute("driver_daily", progress=False)

    yesterday = today - pd.Timedelta(days=1)
    assert (first.computed, again.computed, again.skipped) == ([yesterday.strftime("%Y-%m-%d")], [], [])
    pd.testing.assert_frame_equal(stored(platform, "driver_daily"),
                                  expected_daily(frame[frame["pickup_at"].dt.floor("D") == yesterday]))


@pytest.fixture
def p(kernel_platform):
    return kernel_platform


def test_a_scheduled_view_is_computed_by_the_scheduler(p, driver, tmp_path):
    today = pd.Timestamp.now(tz="UTC").floor("D")
    frame = trips(days=2, first=today - pd.Timedelta(days=1))
    view = python_view(driver, write_daily_files(frame, tmp_path / "trips"), schedule="0 2 * * *")
    p.features.apply([driver, view])
    [applied] = p.jobs.schedules()  # a view that carries a schedule is scheduled when applied
    assert (applied.cron, applied.parameters) == ("0 2 * * *", {"view": "driver_daily", "materialize": False})

    schedule_id = p.features.schedule_compute("driver_daily", materialize=True)  # replaces it

    assert p.features.schedule_compute("driver_daily", materialize=True) == schedule_id  # once, not twice
    [scheduled] = [s for s in p.jobs.schedules() if s.enabled]
    assert (scheduled.cron, scheduled.parameters) == ("0 2 * * *", {"view": "driver_daily", "materialize": True})
    assert Path(scheduled.notebook).name == "feature_compute.ipynb"
    [job] = Scheduler(p.jobs).tick(datetime.now(UTC) + timedelta(days=1))  # its next 02:00 has come
    assert p.jobs.history()[0].id == job and p.jobs.history()[0].status == "succeeded"
    yesterday = frame[frame["pickup_at"].dt.floor("D") == today - pd.Timedelta(days=1)]
    pd.testing.assert_frame_equal(stored(p, "driver_daily"), expected_daily(yesterday))
    online = p.features.get_online_features(["driver_daily:trips"], {"driver_id": [1]}).to_dict()["trips"]
    assert online == expected_daily(yesterday).set_index("driver_id").reindex([1])["trips"].tolist()
