"""A view whose code cannot load, or whose stored definition cannot be read, breaks that view alone.

Definitions are broken the ways that happen: a function from a notebook whose default argument names a notebook
global, and registry rows rewritten with SQL (as a careless user, a hostile one or another mlplat version would).
Another user (a second ``mlplat.connect()``) and a real ``mlplat stream`` process then work with everything else.
"""

from __future__ import annotations

import json
import linecache
import time
import uuid
import warnings

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import mlplat
from mlplat.cli import main
from mlplat.errors import BrokenDefinition, DefinitionError, FutureEventError
from mlplat.features import Entity, FeatureView, Field
from mlplat.features.compute import BatchFeatureView
from mlplat.features.on_demand import OnDemandFeatureView
from mlplat.features.registry import BrokenView, BrokenViewWarning
from mlplat.streaming import Aggregation, StreamFeatureView
from mlplat.streaming.stream_service import StreamService
from mlplat_lab.jsonable import jsonable

NOW = pd.Timestamp.now(tz="UTC").floor("h")
DAY = pd.Timestamp("2024-03-01", tz="UTC")
SCHEMA = [Field("trips", "int64"), Field("revenue", "float64")]
# What a notebook session would have registered, had nothing checked it: the default names a global of the
# session, which a later session (another user, the stream service, a Dask worker) does not have.
UNLOADABLE = {"module": "__main__", "name": "daily", "source": "def daily(df, k=SCALE):\n    return df\n"}


def daily(trips, start, end):
    out = trips.groupby("driver_id", as_index=False).agg(trips=("fare", "size"), revenue=("fare", "sum"))
    return out.assign(event_timestamp=end - pd.Timedelta(1, "us"))


def doubled(df):
    return pd.DataFrame({"rating_x2": df["rating"] * 2})


@pytest.fixture
def notebook():
    """Define functions as a notebook cell does: run as ``__main__``, their source in linecache."""
    cells = []

    def define(source: str, name: str, **session_globals):
        cell = f"<ipython-input-{uuid.uuid4().hex[:8]}>"
        linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
        cells.append(cell)
        namespace = {"__name__": "__main__", "pd": pd, **session_globals}
        exec(compile(source, cell, "exec"), namespace)
        return namespace[name]

    yield define
    for cell in cells:
        del linecache.cache[cell]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "trips.parquet"
    pd.DataFrame({"driver_id": [1, 1, 2], "fare": [10.0, 5.0, 7.0],
                  "pickup_at": [DAY + pd.Timedelta(hours=h) for h in (1, 2, 3)]}).to_parquet(path)
    return str(path)


def batch_view(driver, source, transformation=daily) -> BatchFeatureView:
    return BatchFeatureView("driver_daily", entities=[driver], schema=SCHEMA, transformation=transformation,
                            sources=source, source_timestamp_field="pickup_at")


def registered(driver, driver_stats, source):
    ratings = OnDemandFeatureView("ratings", sources=["driver_stats:rating"], schema=[Field("rating_x2", "float64")],
                                  function=doubled)
    return [driver, driver_stats, batch_view(driver, source), ratings]


def rewrite(platform, view: str, change) -> None:
    """Rewrite the stored spec of ``view``'s latest version straight in the registry database."""
    with platform.features.registry.engine.begin() as conn:
        spec = conn.execute(sa.text("SELECT spec FROM feature_views WHERE name = :n"), {"n": view}).scalar()
        conn.execute(sa.text("UPDATE feature_views SET spec = :s WHERE name = :n"), {"s": change(spec), "n": view})


def with_function(key: str, record: dict):
    def change(spec: str) -> str:
        data = json.loads(spec)
        if key == "transformation":
            data["transformation"]["python"] = record
        else:
            data[key] = record
        return json.dumps(data)

    return change


def another_user(platform, **options):
    return mlplat.connect(home=str(platform.settings.home), online_store=platform.settings.online_store,
                          online_prefix=platform.settings.online_prefix, user="bob", **options)


def test_a_function_that_would_not_load_in_a_later_session_is_refused_when_the_view_is_defined(
        platform, driver, source, notebook):
    scaled = notebook("def daily(df, k=SCALE):\n    return df\n", "daily", SCALE=2)
    with pytest.raises(DefinitionError, match=r"BatchFeatureView 'driver_daily': transformation daily would not load "
                                              r"in a later session: NameError: name 'SCALE' is not defined; .*import "
                                              r"what it needs inside the function, or write the value as a constant"):
        batch_view(driver, source, scaled)
    factored = notebook("def ratings(df, factor=FACTOR):\n    return df * factor\n", "ratings", FACTOR=2)
    with pytest.raises(DefinitionError, match="OnDemandFeatureView 'ratings': function ratings would not load in a "
                                              "later session: NameError: name 'FACTOR' is not defined"):
        OnDemandFeatureView("ratings", sources=["driver_stats:rating"], schema=[Field("rating_x2", "float64")],
                            function=factored)
    assert platform.features.list_views() == []  # nothing reached the registry
    fixed = notebook("def daily(df, k=2):\n    return df\n", "daily")  # a constant loads anywhere
    platform.features.apply([driver, batch_view(driver, source, fixed)])


def test_a_view_whose_code_cannot_load_breaks_that_view_alone(platform, driver, driver_stats, source):
    platform.features.apply(registered(driver, driver_stats, source))
    platform.features.ingest("driver_stats", pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [NOW, NOW],
                                                           "rating": [4.5, 3.0], "trips": [10, 20]}))
    rewrite(platform, "driver_daily", with_function("transformation", UNLOADABLE))
    rewrite(platform, "ratings", with_function("function", {**UNLOADABLE, "name": "ratings"}))

    bob = another_user(platform)
    try:
        assert [v.name for v in bob.features.list_views()] == ["driver_daily", "driver_stats", "ratings"]
        assert [v.name for v in bob.features.search("driver")] == ["driver_daily", "driver_stats"]
        catalog = json.loads(json.dumps(jsonable(bob.features.search(""))))  # what the Lab's feature catalog answers
        assert [(v["name"], v.get("transformation"), v.get("function")) for v in catalog] == [
            ("driver_daily", "daily", None), ("driver_stats", None, None), ("ratings", None, "ratings")]
        assert [r.view for r in bob.features.materialize()] == ["driver_daily", "driver_stats"]
        assert bob.features.get_online_features(["driver_stats:rating"], {"driver_id": [1]}).to_dict()["rating"] == [
            4.5]

        view = bob.features.get_view("driver_daily")
        assert "daily of feature view 'driver_daily' v1: transformation: not loaded yet" in repr(view)
        with pytest.raises(BrokenDefinition, match=r"feature view 'driver_daily' v1: transformation daily cannot be "
                                                   r"loaded: NameError: name 'SCALE' is not defined\. Apply a fixed "
                                                   "definition"):
            bob.features.compute("driver_daily", "2024-03-01", "2024-03-02", progress=False)
        assert bob.features.partitions("driver_daily").empty  # refused before any partition started
        with pytest.raises(BrokenDefinition):
            view.transformation(pd.DataFrame())
        assert "BROKEN: NameError: name 'SCALE' is not defined" in repr(view)  # the view says it is broken
        with pytest.raises(BrokenDefinition, match="on-demand view 'ratings' v1: function ratings cannot be loaded"):
            bob.features.get_online_features(["ratings:rating_x2"], {"driver_id": [1]})

        fixed = bob.features.apply([batch_view(driver, source)])  # diffs the records: nothing is loaded
        assert [(r.action, r.version) for r in fixed] == [("new_version", 2)]
        assert bob.features.compute("driver_daily", "2024-03-01", "2024-03-02", progress=False).rows == 2
    finally:
        bob.close()


def test_a_stored_definition_that_cannot_be_read_is_listed_broken_and_refused_alone(
        platform, driver, driver_stats, source, monkeypatch):
    rides = FeatureView("rides", entities=[driver], schema=[Field("fare", "float64")])
    platform.features.apply([*registered(driver, driver_stats, source), rides])
    platform.features.ingest("rides", pd.DataFrame({"driver_id": [1], "event_timestamp": [NOW], "fare": [9.5]}))
    rewrite(platform, "driver_stats", lambda spec: "{garbage")
    rewrite(platform, "driver_daily", lambda spec: json.dumps({**json.loads(spec), "colour": "red"}))  # a newer mlplat?

    bob = another_user(platform)
    try:
        listed = {v.name: v for v in bob.features.list_views()}
        assert list(listed) == ["driver_daily", "driver_stats", "ratings", "rides"]
        assert isinstance(listed["driver_stats"], BrokenView) and "JSONDecodeError" in listed["driver_stats"].error
        assert "unexpected keyword argument 'colour'" in listed["driver_daily"].description
        assert [v.name for v in bob.features.search("fare")] == ["rides"]
        catalog = json.loads(json.dumps(jsonable(bob.features.search(""))))
        assert [(v["name"], v["version"], "error" in v) for v in catalog] == [
            ("driver_daily", 1, True), ("driver_stats", 1, True), ("ratings", 1, False), ("rides", 1, False)]
        with pytest.raises(BrokenDefinition, match=r"Feature view 'driver_stats' v1: its registered definition cannot "
                                                   r"be read \(JSONDecodeError.*Apply a fixed definition"):
            bob.features.get_view("driver_stats")
        with pytest.warns(BrokenViewWarning) as caught:
            assert [r.view for r in bob.features.materialize()] == ["rides"]
        assert [str(w.message).split(".")[0] for w in caught] == ["materialize: skipped 'driver_daily'",
                                                                 "materialize: skipped 'driver_stats'"]
        assert bob.features.get_online_features(["rides:fare"], {"driver_id": [1]}).to_dict()["fare"] == [9.5]
        monkeypatch.setenv("MLPLAT_HOME", str(platform.settings.home))
        monkeypatch.setenv("MLPLAT_ONLINE_STORE", platform.settings.online_store)
        monkeypatch.setenv("MLPLAT_ONLINE_PREFIX", platform.settings.online_prefix)
        shown = CliRunner().invoke(main, ["features", "list"], catch_exceptions=False).output
        assert "driver_stats             v1   BROKEN: its registered definition cannot be read (JSONDecodeError" in shown

        (fixed,) = bob.features.apply([driver_stats])
        assert (fixed.action, fixed.version, fixed.changes[0]["change"]) == ("new_version", 2,
                                                                            "replaces an unreadable definition")
        assert bob.features.get_view("driver_stats").owner == platform.settings.user  # who created it keeps it
    finally:
        bob.close()


def test_an_entity_that_cannot_be_read_refuses_only_the_views_that_use_it(platform, driver, driver_stats):
    customer = Entity("customer", join_keys=["customer_id"])
    platform.features.apply([driver, customer])
    with platform.features.registry.engine.begin() as conn:
        conn.execute(sa.text("UPDATE entities SET spec = '[1' WHERE name = 'customer'"))
    platform.features.apply([driver_stats])  # uses driver only
    profile = FeatureView("profile", entities=[customer], schema=[Field("age", "int64")])
    with pytest.raises(DefinitionError, match="entity 'customer', whose registered definition cannot be read; apply "
                                              "the Entity again"):
        platform.features.apply([profile])
    assert [r.action for r in platform.features.apply([customer, profile])] == ["updated", "created"]


def test_push_and_ingest_refuse_rows_dated_in_the_future_before_writing_anything(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [now, pd.Timestamp("2100-01-01", tz="UTC")],
                         "rating": [4.0, 5.0], "trips": [1, 2]})
    with pytest.raises(FutureEventError, match=r"push\('driver_stats'\) refused 1 row\(s\) dated later than now .* "
                                               r"plus the allowed clock skew \(0:05:00\): row 1 at 2100-01-01T00:00:00"
                                               r"\+00:00\. Nothing was written.*MLPLAT_MAX_CLOCK_SKEW"):
        platform.features.push("driver_stats", rows)
    with pytest.raises(FutureEventError, match=r"ingest\('driver_stats'\) refused 1 row"):
        platform.features.ingest("driver_stats", rows)
    view = platform.features.get_view("driver_stats")
    assert platform.features.offline.files(view) == []
    assert platform.features.get_online_features(["driver_stats:rating"], {"driver_id": [1]}).to_dict()["rating"] == [
        None]

    soon = rows.assign(event_timestamp=[now - pd.Timedelta(days=1), now + pd.Timedelta(minutes=1)])  # within the skew
    assert platform.features.push("driver_stats", soon) == 2
    lenient = another_user(platform, max_clock_skew="1h")
    try:
        assert lenient.features.ingest("driver_stats", rows.iloc[:1].assign(
            event_timestamp=[now + pd.Timedelta(minutes=30)])).rows == 1
    finally:
        lenient.close()


def test_the_stream_service_consumes_while_other_views_are_broken(platform, driver, source, tmp_path):
    aggregations = [Aggregation("fare", "sum", "1h")]
    trips = StreamFeatureView("trips", entities=[driver], aggregations=aggregations, ttl=None)
    rides = StreamFeatureView("rides", entities=[driver], aggregations=aggregations, ttl=None)
    platform.features.apply([driver, batch_view(driver, source), trips, rides])
    rewrite(platform, "driver_daily", with_function("transformation", UNLOADABLE))
    service = StreamService(platform.settings)  # `mlplat stream`, as `mlplat up` starts it
    service.ensure()

    def fare(view: str):
        return platform.features.get_online_features([f"{view}:fare_sum_1h"], {"driver_id": [1]}).to_dict()[
            "fare_sum_1h"][0]

    def wait_for(condition, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert service.health().state is not None and time.monotonic() < deadline, service.log_file.read_text()[-3000:]
            time.sleep(0.05)

    try:
        for view, value in (("trips", 2.0), ("rides", 3.0)):
            platform.streams.send(view, [{"driver_id": 1, "event_timestamp": NOW, "fare": value}])
        wait_for(lambda: (fare("trips"), fare("rides")) == (2.0, 3.0))
        assert service.health().healthy
        rewrite(platform, "rides", lambda spec: "{garbage")  # a view it consumes becomes unreadable
        wait_for(lambda: not platform.streams.errors("rides").empty)
        assert "its registered definition cannot be read" in platform.streams.errors("rides").error[0]
        platform.streams.send("trips", [{"driver_id": 1, "event_timestamp": NOW, "fare": 1.0}])
        wait_for(lambda: fare("trips") == 3.0)
        wait_for(lambda: service.health().reported != "")  # and `mlplat status` says so, though it makes progress
        shown = CliRunner().invoke(main, ["status"], env=service.environment())
        line = next(line for line in shown.output.splitlines() if line.startswith("stream"))
        assert "DEGRADED (view rides fails: Feature view 'rides' v1: its registered definition cannot be read" in line
        assert shown.exit_code == 1
    finally:
        assert service.stop()


def test_a_broken_view_is_skipped_with_a_warning_only_when_every_view_is_meant(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    rewrite(platform, "driver_stats", lambda spec: "[]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenViewWarning)
        assert platform.features.materialize() == []
    with pytest.raises(BrokenDefinition):
        platform.features.materialize(views=["driver_stats"])


def test_a_side_effecting_default_runs_only_where_its_own_view_is_computed_or_served(
        platform, driver, driver_stats, source, notebook, tmp_path):
    """alice's functions run code when loaded (a default argument with a side effect): listing, materialising,
    reading other views and the stream service never load them; computing or serving her view does."""
    marks = {what: tmp_path / f"{what}.ran" for what in ("batch", "on_demand")}

    def side_effect(what: str) -> str:
        return f"__import__('pathlib').Path({str(marks[what])!r}).touch()"

    daily_with = notebook(f"def daily(trips, start, end, _={side_effect('batch')}):\n"
                          "    out = trips.groupby('driver_id', as_index=False).agg(trips=('fare', 'size'), "
                          "revenue=('fare', 'sum'))\n"
                          "    return out.assign(event_timestamp=end - pd.Timedelta(1, 'us'))\n", "daily")
    doubled_with = notebook(f"def doubled(df, _={side_effect('on_demand')}):\n"
                            "    return pd.DataFrame({'rating_x2': df['rating'] * 2})\n", "doubled")
    ratings = OnDemandFeatureView("ratings", sources=["driver_stats:rating"], schema=[Field("rating_x2", "float64")],
                                  function=doubled_with)
    trips = StreamFeatureView("trips", entities=[driver], aggregations=[Aggregation("fare", "sum", "1h")], ttl=None)
    platform.features.apply([driver, driver_stats, batch_view(driver, source, daily_with), ratings, trips])
    platform.features.ingest("driver_stats", pd.DataFrame({"driver_id": [1], "event_timestamp": [NOW],
                                                           "rating": [4.5], "trips": [10]}))
    for mark in marks.values():  # defining them loaded them once, in alice's own session
        mark.unlink(missing_ok=True)

    bob = another_user(platform)
    service = StreamService(platform.settings)
    try:
        assert len(bob.features.list_views()) == 4 and jsonable(bob.features.search(""))
        assert [r.view for r in bob.features.materialize()] == ["driver_daily", "driver_stats", "trips"]
        assert bob.features.get_online_features(["driver_stats:rating"], {"driver_id": [1]}).to_dict()["rating"] == [
            4.5]
        service.ensure()
        bob.streams.send("trips", [{"driver_id": 1, "event_timestamp": NOW, "fare": 2.0}])
        deadline = time.monotonic() + 40
        while bob.features.get_online_features(["trips:fare_sum_1h"], {"driver_id": [1]}).to_dict()[
                "fare_sum_1h"] != [2.0]:
            assert time.monotonic() < deadline, service.log_file.read_text()[-3000:]
            time.sleep(0.05)
        assert not any(mark.exists() for mark in marks.values())

        bob.features.get_online_features(["ratings:rating_x2"], {"driver_id": [1]})  # serving her view loads it
        assert marks["on_demand"].exists() and not marks["batch"].exists()
        assert bob.features.compute("driver_daily", "2024-03-01", "2024-03-02", progress=False).rows == 2
        assert marks["batch"].exists()
    finally:
        service.stop()
        bob.close()
