"""Whatever a producer writes ends applied or dead-lettered with a reason, and one failing view never stops the rest.

Real redis-server, raw ``XADD`` s of bytes, and the real ``mlplat stream`` process where the service is the point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlplat
from mlplat.errors import StreamError
from mlplat.features import Entity
from mlplat.streaming import Aggregation, StreamFeatureView
from mlplat.streaming.events import decode
from mlplat.streaming.sources import decode_message

NOW = pd.Timestamp.now(tz="UTC").floor("h")  # events in the past hour: applied, and never "future"
REASONS = {"bad message", "duplicate field", "missing key", "missing timestamp", "missing value", "undecodable",
           "bad timestamp", "bad value", "future", "late"}


@pytest.fixture
def driver():
    return Entity("driver", join_keys=["driver_id"])


def trips_view(driver, name: str = "trips", **options) -> StreamFeatureView:
    aggregations = [Aggregation("fare", "sum", "1h"), Aggregation(None, "count", "1h"),
                    Aggregation("rider", "approx_count_distinct", "1h")]
    return StreamFeatureView(name, entities=[driver], aggregations=aggregations,
                             **{"slide": "10min", "watermark": "5min", "ttl": None, **options})


def fare_sum(platform, view: str, driver) -> float | None:
    return platform.features.get_online_features([f"{view}:fare_sum_1h"], {"driver_id": [driver]}).to_dict()[
        "fare_sum_1h"][0]


def xadd(platform, view: str, *pairs) -> None:
    """A raw XADD of exactly these field names and values (bytes as they are, names repeated if given twice)."""
    platform.features.online.client.execute_command("XADD", platform.streams.stream_key(view), "*", *pairs)


def start_service(platform, name: str, log_path) -> subprocess.Popen:
    """``mlplat stream`` in its own process, as ``mlplat up`` starts it; its log goes to ``log_path``."""
    env = {**os.environ, "MLPLAT_HOME": str(platform.settings.home), "MLPLAT_ONLINE_STORE":
           platform.settings.online_store, "MLPLAT_ONLINE_PREFIX": platform.settings.online_prefix}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mlplat.cli", "stream", "--consumer", name], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def stop_service(proc: subprocess.Popen) -> None:
    proc.terminate()
    assert proc.wait(20) == 0  # SIGTERM: a clean stop


def wait_for(condition, proc: subprocess.Popen, log_path, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.05)


# -- what a producer can write -------------------------------------------------------------------------------

def test_the_service_dead_letters_an_undecodable_timestamp_and_applies_the_events_after_it(platform, driver, tmp_path):
    view = trips_view(driver)
    platform.features.apply([driver, view])
    log_path = tmp_path / "stream.log"
    proc = start_service(platform, "svc", log_path)
    try:
        xadd(platform, "trips", "driver_id", "1", "event_timestamp", b"\xff", "fare", "1", "rider", "a")
        platform.streams.send("trips", [{"driver_id": 1, "event_timestamp": NOW, "fare": 2.5, "rider": "b"}])
        wait_for(lambda: fare_sum(platform, "trips", 1) == 2.5, proc, log_path)
        dead = platform.streams.dead_letters("trips")
        assert dead.reason.tolist() == ["undecodable"]
        assert dead.detail[0] == r"event_timestamp=b'\xff' is not UTF-8 text"
        assert platform.streams.lag("trips") == {"waiting": 0, "pending": 0}
    finally:
        stop_service(proc)


BAD = [  # (fields as sent, the reason it is dead-lettered with)
    ([b"driver_id", b"1", b"event_timestamp", b"\xff\xfe", b"fare", b"1", b"rider", b"a"], "undecodable"),
    ([b"driver_id", b"1", b"event_timestamp", b"{ts}", b"fare", b"\xff", b"rider", b"a"], "undecodable"),
    ([b"driver_id", b"\xc3\x28", b"event_timestamp", b"{ts}", b"fare", b"1", b"rider", b"a"], "undecodable"),
    ([b"driver_id", b"1", b"event_timestamp", b"{ts}", b"fare", b"1", b"rider", b"\xe2\x82"], "undecodable"),
    ([b"driver_id", b"1", b"event_timestamp", b"{ts}", b"fare", b"9" * 1_000_000, b"rider", b"a"], "bad value"),
    ([b"driver_id", b"1", b"event_timestamp", b"1" * 100_000, b"fare", b"1", b"rider", b"a"], "bad timestamp"),
    ([b"driver_id", b"1", b"event_timestamp", b"-9223372036854775808", b"fare", b"1", b"rider", b"a"],
     "bad timestamp"),
    ([b"driver_id", b"1", b"event_timestamp", b"{ts}", b"fare", b"1e999", b"rider", b"a"], "bad value"),
    ([b"driver_id", b"1", b"event_timestamp", b"{ts}", b"fare", b"1", b"fare", b"2", b"rider", b"a"],
     "duplicate field"),
    ([b"", b""], "missing key"),
    ([b"driver_id", b"", b"event_timestamp", b"{ts}", b"fare", b"1", b"rider", b"a"], "missing key"),
    ([b"driver_id", b"1", b"event_timestamp", b"4102444800", b"fare", b"1", b"rider", b"a"], "future"),  # 2100
]


def test_any_bytes_in_any_field_end_applied_or_dead_lettered_with_a_reason(platform, driver):
    platform.features.apply([driver, trips_view(driver)])
    ts = str(int(NOW.timestamp())).encode()
    good = [b"driver_id", b"7", b"event_timestamp", ts, b"fare", b"1.5", b"rider", b"a"]
    extra = [*good, b"\xff\xfe", b"\x00" * 100_000]  # an extra field (a name not UTF-8, a huge value) is ignored
    sent = [good, *[[v.replace(b"{ts}", ts) for v in fields] for fields, _ in BAD], extra, good]
    for fields in sent:
        xadd(platform, "trips", *fields)
    results = platform.streams.process()
    assert sum(r.entries for r in results) == len(sent)
    assert sum(r.applied for r in results) == 3 and sum(r.dead for r in results) == len(BAD)
    dead = platform.streams.dead_letters("trips")
    assert dead.reason.tolist() == [reason for _, reason in BAD]
    assert fare_sum(platform, "trips", "7") == 4.5
    assert all(len(v) <= 70_000 for v in dead.fare.dropna())  # a dead letter keeps 64 KiB of a huge field
    assert platform.streams.lag("trips") == {"waiting": 0, "pending": 0}


def test_an_event_from_the_future_is_dead_lettered_instead_of_poisoning_its_entity(platform, driver, tmp_path):
    view = trips_view(driver, ttl="1h")
    platform.features.apply([driver, view])
    platform.streams.send("trips", [{"driver_id": 1, "event_timestamp": pd.Timestamp("2100-01-01", tz="UTC"),
                                     "fare": 100.0, "rider": "x"}])
    platform.streams.send("trips", [{"driver_id": 1, "event_timestamp": NOW + pd.Timedelta(minutes=m), "fare": 1.0,
                                     "rider": "y"} for m in (1, 2)])
    platform.streams.process()
    dead = platform.streams.dead_letters("trips")
    assert dead.reason.tolist() == ["future"] and "2100-01-01" in dead.detail[0]
    assert fare_sum(platform, "trips", 1) == 2.0  # the real events counted, none "late" behind 2100
    key = platform.features.online.key_prefix(platform.features.get_view("trips")) + "1"
    assert 0 < platform.features.online.client.pttl(key) <= 2 * 3600 * 1000  # a ttl from now, not from 2100

    ahead = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=10)  # beyond the default 5 min skew, within 1 h
    platform.streams.send("trips", [{"driver_id": 2, "event_timestamp": ahead, "fare": 3.0, "rider": "z"}])
    platform.streams.process()  # refused by the default skew
    lenient = mlplat.connect(home=str(platform.settings.home), online_store=platform.settings.online_store,
                             online_prefix=platform.settings.online_prefix, max_clock_skew="1h")
    try:
        lenient.streams.send("trips", [{"driver_id": 3, "event_timestamp": ahead, "fare": 3.0, "rider": "z"}])
        lenient.streams.process()  # within the hour this install allows
    finally:
        lenient.close()
    assert platform.streams.dead_letters("trips").reason.tolist() == ["future", "future"]
    assert (fare_sum(platform, "trips", 2), fare_sum(platform, "trips", 3)) == (None, 3.0)


def test_kafka_messages_that_cannot_be_fields_are_bad_messages():
    for value in (b"\xff\xfe", b"[" * 100_000, b'{"driver_id": "\\ud800", "fare": 1}', b"null", b""):
        assert decode_message(value)["_error"], value
    assert decode_message(b'{"driver_id": "\\ud83d\\ude00", "fare": 1}') == {"driver_id": "\U0001f600", "fare": "1"}


# -- one failing view --------------------------------------------------------------------------------------

def test_a_failing_view_is_reported_alone_while_the_service_goes_on_with_the_others(platform, driver, tmp_path):
    platform.features.apply([driver, trips_view(driver), trips_view(driver, "rides")])
    client, rides = platform.features.online.client, platform.streams.stream_key("rides")
    log_path = tmp_path / "stream.log"
    proc = start_service(platform, "svc", log_path)
    try:
        platform.streams.send("rides", [{"driver_id": 1, "event_timestamp": NOW, "fare": 1.0, "rider": "a"}])
        wait_for(lambda: fare_sum(platform, "rides", 1) == 1.0, proc, log_path)
        client.delete(rides)
        client.set(rides, "not a stream")  # a careless producer: every read of the view's stream now fails
        wait_for(lambda: len(platform.streams.errors("rides")) == 1, proc, log_path)
        platform.streams.send("trips", [{"driver_id": 1, "event_timestamp": NOW, "fare": 5.0, "rider": "a"}])
        wait_for(lambda: fare_sum(platform, "trips", 1) == 5.0, proc, log_path)  # the other view goes on
        wait_for(lambda: platform.streams.errors("rides").attempts[0] >= 3, proc, log_path)
        (error,) = platform.streams.errors().itertuples()
        assert (error.view, error.consumer) == ("rides", "svc") and "WRONGTYPE" in error.error
        assert log_path.read_text().count("stream rides: ResponseError: WRONGTYPE") == 1  # logged once, not per try
        with pytest.raises(StreamError, match="cannot be read as a stream"):
            platform.streams.lag("rides")

        client.delete(rides)  # repaired: the next event recreates the stream, and its group with it
        platform.streams.send("rides", [{"driver_id": 2, "event_timestamp": NOW, "fare": 7.0, "rider": "a"}])
        wait_for(lambda: fare_sum(platform, "rides", 2) == 7.0, proc, log_path)
        assert platform.streams.errors().empty
    finally:
        stop_service(proc)


# -- properties --------------------------------------------------------------------------------------------

NAMES = st.sampled_from([b"driver_id", b"event_timestamp", b"fare", b"rider", b"_error"]) | st.binary(max_size=8)


@st.composite
def values(draw) -> bytes:
    now = int(time.time())
    return draw(st.sampled_from([b"1", b"2.5", b"-0", b"nan", b"inf", str(now - 60).encode(),
                                 str((now - 60) * 1000).encode(), str(now + 86_400).encode(),
                                 NOW.isoformat().encode(), b"2024-13-45"]) | st.binary(max_size=24))


ENTRIES = st.lists(st.lists(st.tuples(NAMES, values()), min_size=1, max_size=6), max_size=30)


def view_for_properties() -> StreamFeatureView:
    return trips_view(Entity("driver", join_keys=["driver_id"]), watermark="1h")


@settings(max_examples=300, deadline=None)
@given(ENTRIES)
def test_decoding_never_raises_and_accounts_for_every_entry(batch):
    view = view_for_properties()
    entries = [(f"{i + 1}-0".encode(), [part for pair in fields for part in pair]) for i, fields in enumerate(batch)]
    events, dead = decode(view, view.value_columns, entries, time.time_ns() + 300 * 10**9)
    assert len(events) + len(dead) == len(entries)
    assert {d.reason for d in dead} <= REASONS and all(d.detail for d in dead)
    assert sorted(events.ids + [d.entry_id for d in dead], key=lambda i: int(i.split("-")[0])) == \
        [i.decode() for i, _ in entries]


@pytest.fixture
def property_platform(tmp_path_factory, redis_url):
    p = mlplat.connect(home=str(tmp_path_factory.mktemp("poison")), online_store=redis_url,
                       online_prefix=f"t{uuid.uuid4().hex[:10]}")
    view = view_for_properties()
    p.features.apply([view.entities[0], view])
    yield p
    p.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=ENTRIES)
def test_the_consumer_applies_or_dead_letters_every_entry_a_producer_can_write(property_platform, batch):
    p = property_platform
    dead_before = len(p.streams.dead_letters("trips", count=None))
    for fields in batch:
        xadd(p, "trips", *[part for pair in fields for part in pair])
    results = p.streams.process()  # raises if the consumer failed on the batch
    assert sum(r.entries for r in results) == len(batch)
    assert sum(r.applied + r.dead for r in results) == len(batch)
    dead = p.streams.dead_letters("trips", count=None)
    assert len(dead) - dead_before == sum(r.dead for r in results)
    assert set(dead.reason) <= REASONS
    assert p.streams.lag("trips") == {"waiting": 0, "pending": 0}


def test_a_clock_skew_is_a_duration_setting(monkeypatch, tmp_path):
    from mlplat.config import load_settings
    from mlplat.errors import ConfigError

    assert load_settings(home=str(tmp_path)).max_clock_skew == timedelta(minutes=5)
    for text, skew in (("10min", timedelta(minutes=10)), ("90", timedelta(seconds=90)), ("0", timedelta(0))):
        monkeypatch.setenv("MLPLAT_MAX_CLOCK_SKEW", text)
        assert load_settings(home=str(tmp_path)).max_clock_skew == skew
    for text in ("soon", "-5", "nan", "inf"):
        monkeypatch.setenv("MLPLAT_MAX_CLOCK_SKEW", text)
        with pytest.raises(ConfigError, match="max_clock_skew"):
            load_settings(home=str(tmp_path))
