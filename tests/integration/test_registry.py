"""Definitions are validated, versioned on schema changes, and every change is audited."""

from dataclasses import replace
from datetime import timedelta

import pandas as pd
import pytest

import mlplat
from mlplat.errors import DefinitionError, FeatureNotFound, FeatureViewNotFound
from mlplat.features import Entity, FeatureView, Field


def test_apply_creates_then_is_idempotent(platform, driver, driver_stats):
    first = platform.features.apply([driver, driver_stats])
    assert [(r.kind, r.name, r.action, r.version) for r in first] == [
        ("entity", "driver", "created", None), ("feature_view", "driver_stats", "created", 1)]
    again = platform.features.apply([driver, driver_stats])
    assert [r.action for r in again] == ["unchanged", "unchanged"]
    stored = platform.features.get_view("driver_stats")
    assert stored == replace(driver_stats, version=1, owner=platform.settings.user)  # who applied it first


def test_metadata_change_updates_in_place(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    (result,) = platform.features.apply([replace(driver_stats, owner="ana", ttl=timedelta(hours=6))])
    assert (result.action, result.version) == ("updated", 1)
    assert {c["change"] for c in result.changes} == {"owner changed", "ttl changed"}
    assert platform.features.get_view("driver_stats").owner == "ana"
    assert platform.features.registry.versions("driver_stats") == [1]


def test_schema_change_makes_a_new_version_and_keeps_the_old(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    changed = replace(driver_stats, schema=[Field("rating", "float64"), Field("trips", "int64"), Field("tips", "float32")])
    assert {c["change"] for c in platform.features.diff(changed)} == {"dtype changed", "field added"}
    (result,) = platform.features.apply([changed])
    assert (result.action, result.version) == ("new_version", 2)
    assert platform.features.get_view("driver_stats").version == 2
    assert platform.features.get_view("driver_stats", 1).field("rating").dtype == "float32"
    assert platform.features.registry.versions("driver_stats") == [1, 2]
    diff = platform.features.diff("driver_stats", 1)
    assert {(c["change"], c.get("name")) for c in diff} == {("dtype changed", "rating"), ("field added", "tips")}
    assert all(c["incompatible"] for c in diff)


def test_every_change_records_who_and_when(tmp_path, redis_url, driver, driver_stats):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, user="ana")
    p.features.apply([driver, driver_stats])
    p.close()
    q = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, user="ben")
    q.features.apply([replace(driver_stats, schema=[Field("rating", "float32")])])
    history = q.features.registry.history("driver_stats")
    q.close()
    assert [(h.who, h.action, h.version) for h in history] == [("ana", "created", "1"), ("ben", "new_version", "2")]
    assert history[0].at <= history[1].at
    assert history[1].detail["changes"][0] == {"change": "field removed", "name": "trips", "from": "int64",
                                                   "incompatible": True}


def test_view_needs_its_entity_registered(platform, driver_stats):
    with pytest.raises(DefinitionError, match="entity 'driver', which is not registered"):
        platform.features.apply([driver_stats])
    assert platform.features.list_views() == []  # nothing half-written


def test_changing_an_entitys_join_keys_is_refused(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    with pytest.raises(DefinitionError, match="registered with join keys"):
        platform.features.apply([Entity("driver", join_keys=["id"])])


def test_a_batch_with_one_bad_object_writes_nothing(platform, driver, driver_stats):
    other = FeatureView("other", entities=[Entity("ghost", ["ghost_id"])], schema=[Field("x", "int64")])
    with pytest.raises(DefinitionError):
        platform.features.apply([driver, driver_stats, other])
    assert platform.features.registry.list_entities() == []
    assert platform.features.list_views() == []


@pytest.mark.parametrize("make, message", [
    (lambda e: FeatureView("bad name", entities=[e], schema=[Field("x", "int64")]), "name 'bad name' is invalid"),
    (lambda e: FeatureView("v", entities=[e], schema=[Field("x", "int8")]), "dtype 'int8'"),
    (lambda e: FeatureView("v", entities=[e], schema=[Field("driver_id", "int64")]), "twice"),
    (lambda e: FeatureView("v", entities=[e], schema=[]), "needs schema"),
    (lambda e: FeatureView("v", entities=[e], schema=[Field("x", "int64")], ttl=timedelta(0)), "positive timedelta"),
    (lambda e: FeatureView("v", entities=["driver"], schema=[Field("x", "int64")]), "entities=\\[Entity"),
    (lambda e: Entity("e", join_keys=[]), "at least one join key"),
])
def test_invalid_definitions_say_what_to_fix(driver, make, message):
    with pytest.raises(DefinitionError, match=message):
        make(driver)


def test_unknown_views_and_features_suggest_the_right_name(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats])
    with pytest.raises(FeatureViewNotFound, match="'driver_stat' is not a registered feature view.*did you mean 'driver_stats'"):
        platform.features.get_view("driver_stat")
    with pytest.raises(FeatureViewNotFound, match="no version 7; it has versions \\[1\\]"):
        platform.features.get_view("driver_stats", 7)
    with pytest.raises(FeatureNotFound, match="did you mean driver_stats:rating"):
        platform.features.get_online_features(["driver_stats:ratng"], [{"driver_id": 1}])
    with pytest.raises(FeatureNotFound, match="not a feature reference"):
        platform.features.get_online_features(["rating"], [{"driver_id": 1}])


def test_list_filters_by_pattern(platform, driver, driver_stats):
    platform.features.apply([driver, driver_stats, replace(driver_stats, name="driver_profile")])
    assert [v.name for v in platform.features.list_views()] == ["driver_profile", "driver_stats"]
    assert [v.name for v in platform.features.list_views("STATS")] == ["driver_stats"]


def test_a_view_renders_as_html(driver, driver_stats):
    html = replace(driver_stats, description="Daily <stats>")._repr_html_()
    assert "<td>rating</td><td>float32</td>" in html
    assert "Daily &lt;stats&gt;" in html and "driver (driver_id)" in html


def test_the_registry_on_postgresql(tmp_path, redis_url, postgres_url, driver, driver_stats):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, registry=postgres_url, user="ana")
    try:
        p.features.apply([driver, driver_stats])
        p.features.apply([replace(driver_stats, schema=[Field("rating", "float64")])])
        assert p.features.registry.versions("driver_stats") == [1, 2]
        assert [h.action for h in p.features.registry.history("driver_stats")] == ["created", "new_version"]
        p.features.push("driver_stats", pd.DataFrame(
            {"driver_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "rating": [4.0]}))
        (result,) = p.features.materialize()
        assert p.features.registry.watermark(p.features.get_view("driver_stats")).event_end_ns > 0
        assert result.version == 2
    finally:
        p.close()


def test_a_view_belongs_to_whoever_applied_it_and_their_team(tmp_path, redis_url, driver, driver_stats):
    ana = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, user="ana", team="pricing")
    ana.features.apply([driver, driver_stats])
    ana.close()
    bob = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, user="bob", team="risk")
    assert bob.features.apply([driver, replace(driver_stats, description="ratings")])[1].action == "updated"
    stored = bob.features.get_view("driver_stats")
    assert (stored.owner, stored.team, stored.description) == ("ana", "pricing", "ratings")  # an edit keeps owners
    (_, handed_over) = bob.features.apply([driver, replace(driver_stats, owner="bob", team="risk")])
    assert {c["change"] for c in handed_over.changes} >= {"owner changed", "team changed"}
    assert (bob.features.get_view("driver_stats").owner, bob.features.get_view("driver_stats").team) == ("bob", "risk")
    bob.close()
