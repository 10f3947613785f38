"""Shared fixtures: a real redis-server for the session, an isolated platform per test."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest

import mlplat
from mlplat.config import load_settings
from mlplat.features import Entity, FeatureView, Field
from mlplat.services import RedisService


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the developer's ~/.mlplat, ./mlplat.yaml or MLPLAT_* variables."""
    for name in list(os.environ):
        if name.startswith("MLPLAT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLPLAT_HOME", str(tmp_path / "default-home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, shared by the session."""
    service = RedisService(load_settings(home=str(tmp_path_factory.mktemp("session-redis"))))
    yield service.ensure().url
    service.stop()


@pytest.fixture
def platform(tmp_path, redis_url):
    """A platform with its own home and its own key namespace in the session's Redis."""
    p = mlplat.connect(home=str(tmp_path / "home"), online_store=redis_url, online_prefix=f"t{uuid.uuid4().hex[:10]}")
    yield p
    p.close()


@pytest.fixture
def driver():
    return Entity("driver", join_keys=["driver_id"])


@pytest.fixture
def driver_stats(driver):
    return FeatureView("driver_stats", entities=[driver], ttl=timedelta(days=2),
                       schema=[Field("rating", "float32"), Field("trips", "int64")])
