"""On-demand features: defined, registered with their function, computed the same online and offline."""

import hashlib
import json
import linecache
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from oracle import latest_value

import mlplat
from mlplat.errors import DefinitionError, DtypeMismatch, InvalidArgument, MissingColumnError, OnDemandFeatureError
from mlplat.features import Entity, FeatureView, Field, OnDemandFeatureView
from mlplat.registry import tracking

NOW = pd.Timestamp.now(tz="UTC").floor("s")
driver = Entity("driver", ["driver_id"])
customer = Entity("customer", ["customer_id"])
driver_stats = FeatureView("driver_stats", [driver], ttl=timedelta(days=2), schema=[
    Field("rating", "float32"), Field("avg_fare", "float64"), Field("trips", "int64")])
customer_stats = FeatureView("customer_stats", [customer], schema=[Field("rating", "float64"), Field("tier", "string")])
CALLS = []  # the size of each frame trip_function was called with


def trip_function(df):
    CALLS.append(len(df))
    return pd.DataFrame({
        "fare_per_km": df["avg_fare"] / df["distance_km"],
        "busy": df["trips"] > 10,
        "match": df["driver_stats__rating"] * df["customer_stats__rating"],
        "label": df["tier"] + "/" + df["vehicle"],
    })


trip_features = OnDemandFeatureView(
    "trip_features", function=trip_function, description="What a requested trip looks like", owner="ana",
    tags={"domain": "pricing"},
    sources=["driver_stats:avg_fare", "driver_stats:trips", "driver_stats:rating", "customer_stats:rating",
             "customer_stats:tier"],
    request=[Field("distance_km", "float64"), Field("vehicle", "string")],
    schema=[Field("fare_per_km", "float64"), Field("busy", "bool"), Field("match", "float32"),
            Field("label", "string")])
OUTPUTS = ["fare_per_km", "busy", "match", "label"]
REFS = [f"trip_features:{name}" for name in OUTPUTS] + ["driver_stats:rating"]


def driver_rows(rng):
    drivers = rng.integers(1, 6, 60)
    trips = rng.integers(0, 20, 60).astype(object)
    trips[rng.random(60) < 0.2] = None
    frame = pd.DataFrame({"driver_id": drivers, "event_timestamp": NOW - pd.to_timedelta(rng.integers(1, 40, 60), "h"),
                          "rating": rng.integers(0, 21, 60) / 4, "avg_fare": rng.integers(8, 400, 60) / 8,
                          "trips": pd.array(trips, dtype="Int64")})
    expired = pd.DataFrame({"driver_id": [6], "event_timestamp": [NOW - pd.Timedelta(days=3)], "rating": [5.0],
                            "avg_fare": [10.0], "trips": pd.array([3], dtype="Int64")})  # beyond the 2-day TTL
    return pd.concat([frame, expired], ignore_index=True)


def customer_rows(rng):
    tiers = rng.choice(["gold", "silver"], 20).astype(object)
    tiers[[3, 11]] = None
    return pd.DataFrame({"customer_id": [f"c{i}" for i in rng.integers(1, 5, 20)],
                         "event_timestamp": NOW - pd.to_timedelta(rng.integers(1, 500, 20), "h"),
                         "rating": rng.integers(0, 21, 20) / 4, "tier": tiers})


def trip_rows(rng, n=40):
    return [{"driver_id": int(d), "customer_id": f"c{c}", "distance_km": float(k) / 4, "vehicle": str(v)}
            for d, c, k, v in zip(rng.integers(1, 8, n), rng.integers(1, 6, n), rng.integers(1, 80, n),
                                  rng.choice(["car", "van"], n))]


@pytest.fixture
def trips(platform):
    """Both source views ingested and materialised, trip_features applied."""
    rng = np.random.default_rng(7)
    platform.features.apply([driver, customer, driver_stats, customer_stats, trip_features])
    platform.rows = {"driver_stats": driver_rows(rng), "customer_stats": customer_rows(rng)}
    for view, frame in platform.rows.items():
        platform.features.ingest(view, frame)
    platform.features.materialize(end=NOW.to_pydatetime())
    platform.trips = trip_rows(rng)
    return platform


def present(value):
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value))


def expected_outputs(rows, trips):
    """The on-demand outputs computed by hand from the latest source values, one trip at a time."""
    drivers, customers = (rows[v].to_dict("records") for v in ("driver_stats", "customer_stats"))
    out = {name: [] for name in [*OUTPUTS, "rating"]}
    for trip in trips:
        d = {f: latest_value(drivers, {"driver_id": trip["driver_id"]}, NOW, timedelta(days=2), f)
             for f in ("rating", "avg_fare", "trips")}
        c = {f: latest_value(customers, {"customer_id": trip["customer_id"]}, NOW, None, f) for f in ("rating", "tier")}
        d, c = ({k: v if present(v) else None for k, v in x.items()} for x in (d, c))
        both = d["rating"] is not None and c["rating"] is not None
        out["fare_per_km"].append(None if d["avg_fare"] is None else d["avg_fare"] / trip["distance_km"])
        out["busy"].append(None if d["trips"] is None else d["trips"] > 10)
        out["match"].append(float(np.float32(d["rating"] * c["rating"])) if both else None)
        out["label"].append(None if c["tier"] is None else f"{c['tier']}/{trip['vehicle']}")
        out["rating"].append(d["rating"])
    return out


def as_lists(frame, columns):
    return {c: [v.item() if isinstance(v, np.generic) else v if present(v) else None for v in frame[c]]
            for c in columns}


def test_online_and_offline_compute_the_same_values_as_by_hand(trips):
    expected = expected_outputs(trips.rows, trips.trips)
    assert all(None in values for values in expected.values())  # missing, expired and null inputs are covered
    assert all(any(v is not None for v in values) for values in expected.values())
    CALLS.clear()
    online = trips.features.get_online_features(REFS, trips.trips).to_dict()
    assert list(online) == ["driver_id", "customer_id", "distance_km", "vehicle", *OUTPUTS, "rating"]
    assert {k: online[k] for k in expected} == expected
    # request data given apart from the entity rows, as columns
    keys = {k: [t[k] for t in trips.trips] for k in ("driver_id", "customer_id")}
    request = {k: [t[k] for t in trips.trips] for k in ("distance_km", "vehicle")}
    separate = trips.features.get_online_features(REFS, keys, request_data=request).to_dict()
    assert list(separate) == ["driver_id", "customer_id", *OUTPUTS, "rating"]
    assert {k: separate[k] for k in expected} == expected
    # the training set as of now (after every event) says the same
    entity_df = pd.DataFrame(trips.trips).assign(event_timestamp=NOW, label_time=1)
    offline = trips.features.get_training_set(entity_df, REFS)
    assert list(offline.columns) == [*entity_df.columns, *OUTPUTS, "rating"]
    assert [str(offline[c].dtype) for c in OUTPUTS] == ["float64", "boolean", "float32", "str"]
    assert as_lists(offline, expected) == expected
    assert CALLS == [len(trips.trips)] * 3  # the function ran once per call, on every row at once


def test_offline_values_are_point_in_time_and_keep_the_entity_frame(trips):
    entity_df = pd.DataFrame(trips.trips[:6]).assign(event_timestamp=NOW - pd.Timedelta(hours=20))
    entity_df.index = [10, 10, 3, 2, 1, 0]  # duplicate and unsorted labels come back as given
    frame = trips.features.get_training_set(entity_df, ["trip_features:fare_per_km", "driver_stats:avg_fare"])
    assert list(frame.index) == list(entity_df.index)
    pit = trips.features.get_training_set(entity_df, ["driver_stats:avg_fare"])  # the stored source alone
    np.testing.assert_array_equal(frame["fare_per_km"], pit["avg_fare"] / entity_df["distance_km"])
    assert frame["avg_fare"].equals(pit["avg_fare"])
    # a dask entity frame gives a lazy result that computes the same (the function runs once per partition)
    import dask.dataframe as dd

    lazy = trips.features.get_training_set(dd.from_pandas(entity_df.reset_index(drop=True), npartitions=2),
                                           ["trip_features:fare_per_km", "driver_stats:avg_fare"])
    columns = ["fare_per_km", "avg_fare"]  # (dask converts the entity frame's own string columns)
    pd.testing.assert_frame_equal(lazy.compute()[columns], frame.reset_index(drop=True)[columns])


def test_the_view_and_its_function_round_trip_through_the_registry(trips):
    view = trips.features.get_view("trip_features")
    assert isinstance(view, OnDemandFeatureView) and view.version == 1
    assert view.sources == ["driver_stats@1:avg_fare", "driver_stats@1:trips", "driver_stats@1:rating",
                            "customer_stats@1:rating", "customer_stats@1:tier"]  # pinned when applied
    assert view.udf == {"module": __name__, "name": "trip_function", "source": view.udf["source"],
                        "sha256": hashlib.sha256(view.udf["source"].encode()).hexdigest()}
    assert view.udf["source"].startswith("def trip_function(df):")
    assert view._function() is trip_function  # importable: imported, not re-run
    assert [v.name for v in trips.features.search("pricing")] == ["trip_features"]
    assert "trip_features" in [v.name for v in trips.features.list_views()]
    assert "(on demand)" in view._repr_html_() and "trip_function" in view._repr_html_()
    created = trips.features.registry.history("trip_features")[0]
    assert created.detail["spec"]["function"]["name"] == "trip_function"
    again = trips.features.apply([replace(trip_features, description="Trip features")])
    assert [(r.action, r.version) for r in again] == [("updated", 1)]


def test_a_function_defined_in_a_notebook_is_loaded_from_its_recorded_source(trips):
    source = "def doubled(df):\n    return pd.DataFrame({'twice': df['avg_fare'] * 2})\n"
    cell = "<ipython-input-1-on-demand>"  # what IPython does: the cell's text in linecache, run as __main__
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    try:
        namespace = {"__name__": "__main__", "pd": pd}
        exec(compile(source, cell, "exec"), namespace)
        view = OnDemandFeatureView("twice", sources=["driver_stats:avg_fare"], schema=[Field("twice", "float64")],
                                   function=namespace["doubled"])
        trips.features.apply([view])
    finally:
        del linecache.cache[cell]
    registered = trips.features.get_view("twice")
    assert registered.udf == {"module": "__main__", "name": "doubled", "source": source,
                              "sha256": hashlib.sha256(source.encode()).hexdigest()}
    assert registered._function() is not namespace["doubled"]
    rows = {"driver_id": [1, 2, 7]}
    online = trips.features.get_online_features(["twice:twice", "driver_stats:avg_fare"], rows).to_dict()
    assert online["twice"] == [None if v is None else v * 2 for v in online["avg_fare"]]


def test_a_changed_function_or_source_version_makes_a_new_version(trips):
    def faster(df):
        return pd.DataFrame({"fare_per_km": df["avg_fare"] / df["distance_km"] * 2, "busy": df["trips"] > 5,
                             "match": df["driver_stats__rating"], "label": df["vehicle"]})

    assert [c["change"] for c in trips.features.diff(replace(trip_features, function=faster))] == ["function changed"]
    (result,) = trips.features.apply([replace(trip_features, function=faster)])
    assert (result.action, result.version) == ("new_version", 2)
    assert [c["change"] for c in result.changes] == ["function changed"]
    assert trips.features.get_view("trip_features", 1).udf["name"] == "trip_function"  # version 1 is kept
    # a new version of a source: the on-demand view keeps reading the version it was applied with...
    wider = replace(driver_stats, schema=[*driver_stats.schema, Field("speed", "float32")])
    trips.features.apply([wider])
    assert trips.features.get_view("trip_features").sources[0] == "driver_stats@1:avg_fare"
    row = [{"driver_id": 1, "customer_id": "c1", "distance_km": 2.0, "vehicle": "car"}]
    assert trips.features.get_online_features(["trip_features:fare_per_km"], row).to_dict()["fare_per_km"][0]
    # ...until it is applied again: a new version of it, pinned to the new source version
    (result,) = trips.features.apply([replace(trip_features, function=faster)])
    assert (result.action, result.version) == ("new_version", 3)
    assert [c["change"] for c in result.changes] == ["sources changed"]
    assert trips.features.get_view("trip_features").sources[:3] == [
        "driver_stats@2:avg_fare", "driver_stats@2:trips", "driver_stats@2:rating"]


def missing_column(df):
    return pd.DataFrame({"other": df["avg_fare"]})


def one_row_short(df):
    return pd.DataFrame({"out": df["avg_fare"]}).iloc[1:]


def not_a_frame(df):
    return df["avg_fare"] * 2


def text_for_a_number(df):
    return pd.DataFrame({"out": df["avg_fare"].astype(str)})


def raises(df):
    raise ZeroDivisionError("no trips yet")


@pytest.mark.parametrize("function, message", [
    (missing_column, r"returned the columns \['other'\]; it must return each of out \(float64\) once"),
    (one_row_short, "returned 2 rows for 3 input rows; it must return one row per input row"),
    (not_a_frame, "returned a Series; it must return a pandas DataFrame with the columns out"),
    (text_for_a_number, "returned column 'out' as str, which cannot be read as the declared float64"),
    (raises, "The function raises of on-demand view 'broken' raised ZeroDivisionError: no trips yet"),
])
def test_a_function_returning_the_wrong_schema_is_explained_online_and_offline(trips, function, message):
    trips.features.apply([OnDemandFeatureView("broken", sources=["driver_stats:avg_fare"],
                                              schema=[Field("out", "float64")], function=function)])
    with pytest.raises(OnDemandFeatureError, match=message):
        trips.features.get_online_features(["broken:out"], {"driver_id": [1, 2, 3]})
    with pytest.raises(OnDemandFeatureError, match=message):
        trips.features.get_training_set(pd.DataFrame({"driver_id": [1, 2, 3], "event_timestamp": NOW}), ["broken:out"])


def test_missing_or_bad_request_data_is_explained(trips):
    rows = {"driver_id": [1, 2], "customer_id": ["c1", "c2"]}
    with pytest.raises(MissingColumnError, match=r"needs request data 'distance_km' \(float64\); pass request_data="):
        trips.features.get_online_features(REFS, rows)
    with pytest.raises(InvalidArgument, match=r"request_data\['vehicle'\] has 1 values for 2 entity rows"):
        trips.features.get_online_features(REFS, rows, request_data={"distance_km": [1, 2], "vehicle": ["car"]})
    with pytest.raises(DtypeMismatch, match="Request data 'distance_km' of on-demand view 'trip_features' is declared"):
        trips.features.get_online_features(REFS, rows, request_data={"distance_km": ["far", "near"],
                                                                     "vehicle": ["car", "van"]})
    entity_df = pd.DataFrame({**rows, "distance_km": [1.0, 2.0], "event_timestamp": NOW})
    with pytest.raises(MissingColumnError, match="entity_df lacks request column 'vehicle' \\(string\\), which "
                                                 "on-demand view 'trip_features' needs"):
        trips.features.get_training_set(entity_df, REFS)


def test_an_on_demand_view_stores_nothing(trips):
    frame = pd.DataFrame({"driver_id": [1], "event_timestamp": [NOW], "fare_per_km": [1.0]})
    for action in (lambda: trips.features.ingest("trip_features", frame),
                   lambda: trips.features.push("trip_features", frame),
                   lambda: trips.features.materialize(views=["trip_features"])):
        with pytest.raises(DefinitionError, match="'trip_features' is an on-demand view: it stores nothing"):
            action()
    assert [r.view for r in trips.features.materialize()] == ["customer_stats", "driver_stats"]


def two_arguments(df, other):
    return df


@pytest.mark.parametrize("change, message", [
    ({"request": [Field("avg_fare", "float64")]}, r"uses the name\(s\) \['avg_fare'\] twice"),
    ({"schema": [Field("distance_km", "float64")]}, r"uses the name\(s\) \['distance_km'\] twice"),
    ({"schema": [Field("tier", "string")]}, r"uses the name\(s\) \['tier'\] twice"),
    ({"function": lambda df: df}, "must be a function defined with def"),
    ({"function": "trip_function"}, "must be a function defined with def"),
    ({"function": two_arguments}, "must take one argument, a DataFrame of its inputs"),
    ({"sources": []}, r"needs sources=\['view:feature', ...\]"),
    ({"sources": ["driver_stats:*"]}, "must name one feature"),
    ({"sources": ["driver_stats"]}, "bad source. 'driver_stats' is not a feature reference"),
    ({"entities": [driver]}, "takes no entities"),
    ({"ttl": timedelta(days=1)}, "ttl= does not apply to an on-demand view"),
    ({"schema": [Field("fare_per_km", "float64", min=0)]}, "expectations are checked on ingest and push"),
])
def test_bad_definitions_are_refused(change, message):
    with pytest.raises(DefinitionError, match=message):
        replace(trip_features, **change)


@pytest.mark.parametrize("sources, message", [
    (["drivers_stats:avg_fare"], "source 'drivers_stats:avg_fare' names no registered feature view "
                                 r"\(did you mean 'driver_stats'\?\); apply the source view first"),
    (["driver_stats@3:avg_fare"], "names no registered feature view at version 3"),
    (["driver_stats:avg_far"], "has no feature 'avg_far'; did you mean driver_stats:avg_fare?"),
    (["trip_features:label"], "source 'trip_features:label' is itself on-demand"),
])
def test_sources_are_checked_when_applied_and_nothing_is_written(trips, sources, message):
    bad = OnDemandFeatureView("bad", sources=sources, schema=[Field("out", "float64")], function=missing_column)
    with pytest.raises(DefinitionError, match=message):
        trips.features.apply([Entity("zone", ["zone_id"]), bad])
    assert "bad" not in trips.features.registry.view_names()
    assert "zone" not in [e.name for e in trips.features.registry.list_entities()]


def test_sources_may_be_applied_with_the_view(platform):
    results = platform.features.apply([trip_features, customer_stats, driver, customer, driver_stats])
    assert [(r.name, r.action) for r in results] == [
        ("driver", "created"), ("customer", "created"), ("trip_features", "created"),
        ("customer_stats", "created"), ("driver_stats", "created")]
    assert platform.features.get_view("trip_features").sources[-1] == "customer_stats@1:tier"


# -- training and serving -------------------------------------------------------------

MODEL_FEATURES = ["trip_features:fare_per_km", "trip_features:match", "driver_stats:trips"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, redis_url):
    """A model trained on on-demand features (and one stored feature)."""
    p = mlplat.connect(home=str(tmp_path_factory.mktemp("on-demand")), online_store=redis_url,
                       online_prefix="on-demand", user="ana")
    rng = np.random.default_rng(3)
    p.features.apply([driver, customer, driver_stats, customer_stats, trip_features])
    p.features.ingest("driver_stats", driver_rows(rng))
    p.features.ingest("customer_stats", customer_rows(rng))
    p.features.materialize(end=NOW.to_pydatetime())
    labels = pd.DataFrame(trip_rows(rng, 400))
    labels["event_timestamp"] = NOW - pd.to_timedelta(rng.integers(0, 30, 400), "h")
    labels["long"] = (labels["distance_km"] > 10).astype(int)
    p.result = p.train("xgboost.XGBClassifier", features=MODEL_FEATURES, entity_df=labels, target="long",
                       name="trip_model", params={"n_estimators": 10})
    yield p
    p.close()


def test_training_records_the_on_demand_view_and_its_sources(trained):
    assert trained.result.features == ["trip_features@1:fare_per_km", "trip_features@1:match", "driver_stats@1:trips"]
    with tracking.session(trained.settings) as client:
        tags = client.get_run(trained.result.run_id).data.tags
    assert json.loads(tags["mlplat.feature_views"]) == ["customer_stats@1", "driver_stats@1", "trip_features@1"]
    text = str(trained.lineage(model="trip_model", version=trained.result.version))
    assert "feature view: trip_features v1 (on demand)  (features=fare_per_km, match, function=trip_function" in text
    assert "feature view: customer_stats v1  (features=rating, tier" in text
    users = str(trained.lineage(feature_view="customer_stats"))
    assert "trip_model v1  (uses=customer_stats@1 via trip_features@1" in users


def test_a_model_on_on_demand_features_serves_with_request_data(trained):
    from mlplat.registry.artifacts import load_model
    from mlplat.serving.triton import TritonService, triton_installed

    if not triton_installed(trained.settings):
        pytest.skip(f"no Triton in {trained.settings.triton_env}: `make triton` creates it")
    trained.models.promote("trip_model")
    try:
        deployment = trained.deploy("trip_model")
        assert deployment.status == "READY"
        assert not (TritonService(trained.settings).models / "trip_model_by_id").exists()
        rows = trip_rows(np.random.default_rng(5), 6)
        prediction = trained.predict("trip_model", rows)
        online = trained.features.get_online_features(MODEL_FEATURES, rows).to_dict()
        X = np.array([online[c] for c in ("fare_per_km", "match", "trips")], dtype=np.float32).T
        native = load_model(trained.settings, "trip_model", deployment.version, "xgboost").predict_proba(X)
        np.testing.assert_allclose(prediction.outputs, native, atol=1e-5)
    finally:
        TritonService(trained.settings).stop()
