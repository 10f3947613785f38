"""Point-in-time training sets, checked row by row against the naive oracle."""

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from oracle import latest_value

from mlplat.errors import EntityDataFrameError, MissingColumnError
from mlplat.features import Entity, FeatureView, Field

START = pd.Timestamp("2026-03-01", tz="UTC")
driver = Entity("driver", ["driver_id"])
customer = Entity("customer", ["customer_id"])
zone = Entity("zone", ["zone"])
driver_hourly = FeatureView("driver_hourly", [driver], [Field("rating", "float64"), Field("trips", "int64")],
                            ttl=timedelta(hours=5))
customer_profile = FeatureView("customer_profile", [customer], [Field("spend", "float32"), Field("tier", "string")],
                               created_timestamp_field="created")  # no TTL: any age is served
driver_zone = FeatureView("driver_zone", [driver, zone], [Field("rating", "float32"), Field("busy", "bool")],
                          ttl=timedelta(hours=10))
VIEWS = [driver_hourly, customer_profile, driver_zone]
FEATURES = ["driver_hourly:rating", "driver_hourly:trips", "customer_profile:spend", "customer_profile:tier",
            "driver_zone:rating", "driver_zone:busy"]
COLUMNS = {"driver_hourly:rating": ("driver_hourly", "rating", "driver_hourly__rating"),
           "driver_hourly:trips": ("driver_hourly", "trips", "trips"),
           "customer_profile:spend": ("customer_profile", "spend", "spend"),
           "customer_profile:tier": ("customer_profile", "tier", "tier"),
           "driver_zone:rating": ("driver_zone", "rating", "driver_zone__rating"),
           "driver_zone:busy": ("driver_zone", "busy", "busy")}


def hours(rng, n):
    """Times on an hourly grid, so data and query times often tie exactly."""
    return START + pd.to_timedelta(rng.integers(0, 48, n), unit="h")


def make_batches(rng):
    """Three ingest batches per view, with duplicate (entity, time) rows across batches."""
    batches = {v.name: [] for v in VIEWS}
    for _ in range(3):
        n = 120
        trips = rng.integers(0, 50, n).astype(object)
        trips[rng.random(n) < 0.1] = None  # some missing values
        batches["driver_hourly"].append(pd.DataFrame({
            "driver_id": rng.integers(1, 8, n), "event_timestamp": hours(rng, n),
            "rating": rng.integers(0, 20, n) / 4, "trips": pd.array(trips, dtype="Int64")}))
        event = hours(rng, 40)
        batches["customer_profile"].append(pd.DataFrame({
            "customer_id": [f"c{i}" for i in rng.integers(1, 5, 40)], "event_timestamp": event,
            # late corrections: same event time, created some hours later (or earlier!)
            "created": event + pd.to_timedelta(rng.integers(-3, 6, 40), unit="h"),
            "spend": (rng.integers(0, 400, 40) / 4).astype("float32"), "tier": rng.choice(["a", "b", "c"], 40)}))
        batches["driver_zone"].append(pd.DataFrame({
            "driver_id": rng.integers(1, 5, n), "zone": rng.choice(["north", "south"], n),
            "event_timestamp": hours(rng, n), "rating": (rng.integers(0, 20, n) / 4).astype("float32"),
            "busy": rng.random(n) < 0.5}))
    return batches


def make_entity_df(rng, n=400):
    index = rng.integers(0, 50, n)  # a shuffled index with repeated labels
    return pd.DataFrame({
        "driver_id": rng.integers(0, 9, n),  # 0 and 8 never have data
        "customer_id": [f"c{i}" for i in rng.integers(0, 6, n)],
        "zone": rng.choice(["north", "south", "east"], n),
        "event_timestamp": START + pd.to_timedelta(rng.integers(-3, 60, n), unit="h"),  # some before any data
        "label": rng.integers(0, 2, n),
    }, index=index)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    return make_batches(rng), make_entity_df(rng)


@pytest.fixture
def loaded(platform, data):
    batches, _ = data
    platform.features.apply([driver, customer, zone, *VIEWS])
    for name, frames in batches.items():
        for frame in frames:
            platform.features.ingest(name, frame)
    return platform


def oracle_frame(batches, entity_df):
    """Expected feature columns, computed by scanning every row for every query."""
    rows = {name: [r for f in frames for r in f.to_dict("records")] for name, frames in batches.items()}
    views = {v.name: v for v in VIEWS}
    expected = {column: [] for _, _, column in COLUMNS.values()}
    for query in entity_df.to_dict("records"):
        for view_name, feature, column in COLUMNS.values():
            view = views[view_name]
            keys = {k: query[k] for k in view.join_keys}
            value = latest_value(rows[view_name], keys, query["event_timestamp"], view.ttl, feature,
                                 created=view.created_timestamp_field)
            expected[column].append(None if value is None or value is pd.NA else value)
    return expected


def assert_matches_oracle(result, batches, entity_df):
    expected = oracle_frame(batches, entity_df)
    for column, values in expected.items():
        got = [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
               for v in result[column].tolist()]
        assert got == values, column


def test_matches_the_oracle_row_by_row(loaded, data):
    batches, entity_df = data
    result = loaded.features.get_training_set(entity_df, FEATURES)
    assert_matches_oracle(result, batches, entity_df)
    # every input row exactly once, in order, index and extra columns untouched
    pd.testing.assert_frame_equal(result[entity_df.columns], entity_df)
    assert list(result.columns) == [*entity_df.columns, *(c for _, _, c in COLUMNS.values())]
    assert result["trips"].dtype == "Int64" and result["busy"].dtype == "boolean"
    narrow = loaded.features.get_training_set(entity_df.astype({"driver_id": "int32"}), FEATURES)
    pd.testing.assert_frame_equal(narrow.drop(columns="driver_id"), result.drop(columns="driver_id"))


def test_the_same_join_on_a_dask_cluster(loaded, data):
    from dask.distributed import Client, LocalCluster

    batches, entity_df = data
    local = loaded.features.get_training_set(entity_df, FEATURES)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        distributed = loaded.features.get_training_set(entity_df, FEATURES, client=client)
    pd.testing.assert_frame_equal(distributed, local)


def test_a_dask_dataframe_gives_a_lazy_result(loaded, data):
    import dask.dataframe as dd

    batches, entity_df = data
    ordered = entity_df.sort_values("event_timestamp", kind="stable")
    entities = dd.from_pandas(ordered, npartitions=4, sort=False)
    lazy = loaded.features.get_training_set(entities, FEATURES)
    assert isinstance(lazy, dd.DataFrame) and lazy.npartitions == 4
    computed = lazy.compute(scheduler="processes", num_workers=2)
    # dask may store strings differently; the same rows as dask holds them must join the same
    pd.testing.assert_frame_equal(computed, loaded.features.get_training_set(entities.compute(), FEATURES))
    assert_matches_oracle(computed, batches, ordered)


def test_later_correction_wins_and_earlier_created_does_not(platform):
    platform.features.apply([customer, customer_profile])
    t = START + pd.Timedelta(hours=1)
    first = pd.DataFrame({"customer_id": ["c1"], "event_timestamp": [t], "created": [t],
                          "spend": [1.0], "tier": ["a"]})
    platform.features.ingest("customer_profile", first)
    platform.features.ingest("customer_profile", first.assign(created=t + pd.Timedelta(hours=2), spend=2.0))
    platform.features.ingest("customer_profile", first.assign(created=t - pd.Timedelta(hours=1), spend=3.0))
    query = pd.DataFrame({"customer_id": ["c1", "c1"], "event_timestamp": [t, t - pd.Timedelta(seconds=1)]})
    result = platform.features.get_training_set(query, ["customer_profile:spend"])
    assert result["spend"].tolist()[0] == 2.0  # the latest correction
    assert math.isnan(result["spend"].tolist()[1])  # nothing before the first event


def test_ttl_boundary_is_inclusive(platform):
    platform.features.apply([driver, driver_hourly])
    t = START
    platform.features.ingest("driver_hourly", pd.DataFrame(
        {"driver_id": [1], "event_timestamp": [t], "rating": [4.0], "trips": [3]}))
    query = pd.DataFrame({"driver_id": [1, 1, 1], "event_timestamp": [
        t, t + pd.Timedelta(hours=5), t + pd.Timedelta(hours=5, microseconds=1)]})
    result = platform.features.get_training_set(query, ["driver_hourly:rating"])
    assert result["rating"].tolist()[:2] == [4.0, 4.0] and math.isnan(result["rating"].tolist()[2])


def test_a_whole_view_and_an_old_version(platform):
    platform.features.apply([driver, driver_hourly])
    t = START
    platform.features.ingest("driver_hourly", pd.DataFrame(
        {"driver_id": [1], "event_timestamp": [t], "rating": [4.0], "trips": [3]}))
    from dataclasses import replace

    platform.features.apply([replace(driver_hourly, schema=[Field("rating", "float32")])])  # v2, no data yet
    query = pd.DataFrame({"driver_id": [1], "event_timestamp": [t]})
    result = platform.features.get_training_set(query, ["driver_hourly@1:*", "driver_hourly:rating"])
    assert result.filter(like="rating").columns.tolist() == ["driver_hourly_v1__rating", "driver_hourly_v2__rating"]
    assert result["trips"].tolist() == [3]
    assert result["driver_hourly_v1__rating"].tolist() == [4.0]
    assert math.isnan(result["driver_hourly_v2__rating"].iloc[0])


def test_empty_entity_df(loaded, data):
    _, entity_df = data
    result = loaded.features.get_training_set(entity_df.iloc[:0], FEATURES)
    assert len(result) == 0 and "busy" in result.columns


@pytest.mark.parametrize("change, error, message", [
    (lambda df: df.drop(columns=["event_timestamp"]), EntityDataFrameError, "no 'event_timestamp' column"),
    (lambda df: df.assign(event_timestamp="2026-01-01"), EntityDataFrameError, "not a timestamp"),
    (lambda df: df.drop(columns=["zone"]), MissingColumnError, "lacks join key 'zone'"),
    (lambda df: df.assign(driver_id=df["driver_id"].astype(str)), EntityDataFrameError, "convert it so the keys can match"),
    (lambda df: df.assign(customer_id=None), EntityDataFrameError, "null values"),
])
def test_unusable_entity_df_is_explained(loaded, data, change, error, message):
    _, entity_df = data
    with pytest.raises(error, match=message):
        loaded.features.get_training_set(change(entity_df), FEATURES)
