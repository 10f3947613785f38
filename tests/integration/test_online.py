"""Materialise to Redis and read back: online agrees with offline, incrementally and safely."""

import time
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from oracle import latest_value

import mlplat
from mlplat import services
from mlplat.errors import FeatureViewNotFound, InvalidArgument, MissingColumnError, OnlineStoreUnavailable
from mlplat.features import Entity, FeatureView, Field

NOW = pd.Timestamp.now(tz="UTC").floor("s")
shop = Entity("shop", ["shop_id", "region"])
shop_stats = FeatureView("shop_stats", [shop], ttl=timedelta(hours=12), schema=[
    Field("sales", "float64"), Field("orders", "int32"), Field("open", "bool"), Field("manager", "string")])


def shop_rows(rng, n, newest_hours_ago=0):
    ages = pd.to_timedelta(rng.integers(newest_hours_ago * 60, 20 * 60, n), unit="min")  # some beyond the TTL
    orders = rng.integers(0, 100, n).astype(object)
    orders[rng.random(n) < 0.15] = None
    return pd.DataFrame({
        "shop_id": rng.integers(1, 30, n), "region": rng.choice(["eu", "us"], n), "event_timestamp": NOW - ages,
        "sales": rng.integers(0, 4000, n) / 8, "orders": pd.array(orders, dtype="Int32"),
        "open": rng.random(n) < 0.5, "manager": rng.choice(["ana", "bo", "čeněk", ""], n)})


def expected_online(frames, entities):
    rows = [r for f in frames for r in f.to_dict("records")]
    out = {}
    for feature in ("sales", "orders", "open", "manager"):
        values = [latest_value(rows, e, NOW, shop_stats.ttl, feature) for e in entities]
        out[feature] = [None if v is pd.NA else v for v in values]
    return out


ENTITIES = [{"shop_id": i, "region": r} for i in range(0, 32) for r in ("eu", "us")]


@pytest.fixture
def shops(platform):
    platform.features.apply([shop, shop_stats])
    return platform


def read(platform, entities=ENTITIES):
    result = platform.features.get_online_features(
        ["shop_stats:sales", "shop_stats:orders", "shop_stats:open", "shop_stats:manager"], entities).to_dict()
    return {k: v for k, v in result.items() if k not in ("shop_id", "region")}


def test_online_agrees_with_the_offline_latest(shops):
    rng = np.random.default_rng(1)
    frames = [shop_rows(rng, 300), shop_rows(rng, 300)]
    for frame in frames:
        shops.features.ingest("shop_stats", frame)
    (result,) = shops.features.materialize(end=NOW.to_pydatetime())
    assert result.rows_read > 0
    expected = expected_online(frames, ENTITIES)
    assert read(shops) == expected
    assert any(v is None for v in expected["sales"])  # some entities are missing or expired
    # and the training set as of now says the same
    query = pd.DataFrame(ENTITIES).assign(event_timestamp=NOW)
    offline = shops.features.get_training_set(query, ["shop_stats:sales"])
    assert [None if np.isnan(v) else v for v in offline["sales"]] == expected["sales"]


def test_incremental_runs_pick_up_new_and_late_data_and_never_go_back(shops):
    rng = np.random.default_rng(2)
    first = shop_rows(rng, 200, newest_hours_ago=3)
    shops.features.ingest("shop_stats", first)
    shops.features.materialize()
    late = shop_rows(rng, 100, newest_hours_ago=0)  # late arrivals: event times before the watermark
    stale = shop_rows(rng, 100, newest_hours_ago=0).assign(event_timestamp=NOW - pd.Timedelta(hours=11))
    shops.features.ingest("shop_stats", late)
    shops.features.ingest("shop_stats", stale)
    (second,) = shops.features.materialize()
    within_ttl = sum((NOW - f["event_timestamp"] < shop_stats.ttl).sum() for f in (late, stale))
    assert second.rows_read == within_ttl  # only the two new files, not the first batch again
    assert read(shops) == expected_online([first, late, stale], ENTITIES)
    (third,) = shops.features.materialize()
    assert (third.rows_read, third.written) == (0, 0)  # idempotent: nothing new, nothing written


def test_rerunning_an_explicit_range_is_idempotent(shops):
    rng = np.random.default_rng(3)
    frame = shop_rows(rng, 200)
    shops.features.ingest("shop_stats", frame)
    start = (NOW - pd.Timedelta(days=1)).to_pydatetime()
    (first,) = shops.features.materialize(start=start)
    before = read(shops)
    (again,) = shops.features.materialize(start=start)
    assert again.rows_read == first.rows_read and read(shops) == before


def test_push_updates_online_at_once_and_appends_offline(shops):
    fresh = pd.DataFrame({"shop_id": [7], "region": ["eu"], "event_timestamp": [NOW], "sales": [99.5],
                          "orders": [3], "open": [True], "manager": ["zoë"]})
    assert shops.features.push("shop_stats", fresh) == 1
    online = read(shops, [{"shop_id": 7, "region": "eu"}])
    assert online == {"sales": [99.5], "orders": [3], "open": [True], "manager": ["zoë"]}
    older = fresh.assign(event_timestamp=NOW - pd.Timedelta(hours=1), sales=1.0)
    shops.features.push("shop_stats", older)  # an older event never replaces a newer value
    assert read(shops, [{"shop_id": 7, "region": "eu"}])["sales"] == [99.5]
    query = pd.DataFrame({"shop_id": [7], "region": ["eu"], "event_timestamp": [NOW]})
    assert shops.features.get_training_set(query, ["shop_stats:sales"])["sales"].tolist() == [99.5]


def test_values_expire_with_the_ttl(platform):
    quick = FeatureView("quick", [shop], [Field("x", "float32")], ttl=timedelta(seconds=1))
    platform.features.apply([shop, quick])
    platform.features.push("quick", pd.DataFrame(
        {"shop_id": [1], "region": ["eu"], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "x": [2.5]}))
    rows = {"shop_id": [1], "region": ["eu"]}
    assert platform.features.get_online_features(["quick:x"], rows).to_dict()["x"] == [2.5]
    deadline = time.monotonic() + 10  # Redis expires it on its own clock, a second after the event
    while platform.features.get_online_features(["quick:x"], rows).to_dict()["x"] != [None]:
        assert time.monotonic() < deadline, "the value outlived its TTL"
        time.sleep(0.05)


def test_columns_in_and_a_dataframe_out(shops):
    result = shops.features.get_online_features(["shop_stats:sales"], {"shop_id": [1, 2], "region": ["eu", "us"]})
    assert result.to_df().columns.tolist() == ["shop_id", "region", "sales"]
    assert result.to_dict()["sales"] == [None, None]


def test_bad_lookups_are_explained(shops):
    with pytest.raises(MissingColumnError, match="lack join key 'region'"):
        shops.features.get_online_features(["shop_stats:sales"], [{"shop_id": 1}])
    with pytest.raises(FeatureViewNotFound):
        shops.features.materialize(views=["shop_stat"])
    with pytest.raises(InvalidArgument, match="start is after end"):
        shops.features.materialize(start=NOW.to_pydatetime(), end=(NOW - pd.Timedelta(days=1)).to_pydatetime())
    with pytest.raises(InvalidArgument, match="end=.yesterday. is not a date or time"):
        shops.features.materialize(end="yesterday")


def test_no_entities_give_empty_columns(shops):
    assert shops.features.get_online_features(["shop_stats:sales"], []).to_dict() == {
        "shop_id": [], "region": [], "sales": []}


def test_unreachable_redis_is_explained(tmp_path, driver, driver_stats):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=f"redis://127.0.0.1:{services.free_port()}/0")
    p.features.apply([driver, driver_stats])
    with pytest.raises(OnlineStoreUnavailable, match="Start it with `mlplat up`"):
        p.features.get_online_features(["driver_stats:rating"], [{"driver_id": 1}])
    with pytest.raises(OnlineStoreUnavailable):
        p.features.push("driver_stats", pd.DataFrame(
            {"driver_id": [1], "event_timestamp": [NOW], "rating": [4.5], "trips": [9]}))
    query = pd.DataFrame({"driver_id": [1], "event_timestamp": [NOW]})
    assert np.isnan(p.features.get_training_set(query, ["driver_stats:rating"])["rating"].iloc[0])  # nothing written
    p.close()


def test_a_redis_restart_loses_nothing(tmp_path, driver, driver_stats):
    home = str(tmp_path / "embedded")
    p = mlplat.connect(home=home)  # starts its own redis-server with the append-only file
    p.features.apply([driver, driver_stats])
    p.features.push("driver_stats", pd.DataFrame(
        {"driver_id": [1], "event_timestamp": [NOW], "rating": [4.5], "trips": [9]}))
    services.down(p.settings)
    p.close()
    q = mlplat.connect(home=home)
    try:
        online = q.features.get_online_features(["driver_stats:rating", "driver_stats:trips"], [{"driver_id": 1}])
        assert online.to_dict() == {"driver_id": [1], "rating": [4.5], "trips": [9]}
    finally:
        q.close()
        services.down(q.settings)


def test_a_new_version_starts_empty_online(shops):
    shops.features.push("shop_stats", shop_rows(np.random.default_rng(4), 50, newest_hours_ago=0))
    shops.features.apply([replace(shop_stats, schema=[Field("sales", "float32")])])
    assert set(read_v2 := shops.features.get_online_features(
        ["shop_stats:sales"], ENTITIES).to_dict()["sales"]) == {None}, read_v2


def test_a_concurrent_newer_write_is_never_overwritten(shops, monkeypatch):
    from mlplat.features import online

    row = {"shop_id": [7], "region": ["eu"], "orders": [1], "open": [True], "manager": ["a"]}
    older = pd.DataFrame({**row, "event_timestamp": [NOW - pd.Timedelta(hours=1)], "sales": [1.0]})
    newer = pd.DataFrame({**row, "event_timestamp": [NOW], "sales": [2.0]})
    real_stamps, calls = online.RecordCodec.stamps, []

    def stamps_then_race(codec, values):
        calls.append(1)
        if len(calls) == 1:  # another writer lands between our read and our EXEC
            shops.features.push("shop_stats", newer)
        return real_stamps(codec, values)

    monkeypatch.setattr(online.RecordCodec, "stamps", stamps_then_race)
    shops.features.push("shop_stats", older)
    assert len(calls) == 3  # our read, the racing push's read, our retried read
    assert read(shops, [{"shop_id": 7, "region": "eu"}])["sales"] == [2.0]
