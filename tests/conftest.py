"""Shared fixtures: a real redis-server for the session, an isolated platform per test, the demo's platforms.

Tests come in tiers, one folder each: ``unit/`` (no service), ``integration/`` (real Redis, MLflow,
Triton, kernels, PostgreSQL) and ``e2e/`` (a real hub and a browser); each test is marked as its tier.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import platforms
import pytest

import mlplat
from mlplat.config import load_settings
from mlplat.features import Entity, FeatureView, Field
from mlplat.features.redis_service import RedisService, online_store_url
from mlplat.services import free_port

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items):
    """Mark each test with its tier (the folder it is in), so ``pytest -m unit`` runs one tier."""
    for item in items:
        tier = next((part for part in item.path.parts if part in TIERS), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


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
    yield online_store_url(service.settings)  # as its admin
    service.stop()


@pytest.fixture(scope="session")
def demo_platform(redis_url):
    """Makes platforms holding the demo's features on the session's Redis: ``demo_platform(home, drivers=100,
    seed=11)`` (see :func:`platforms.demo_platform`); module fixtures share one, tests make their own."""
    return functools.partial(platforms.demo_platform, redis_url=redis_url)


@pytest.fixture
def platform(tmp_path, redis_url):
    """A platform with its own home and its own key namespace in the session's Redis."""
    p = mlplat.connect(home=str(tmp_path / "home"), online_store=redis_url, online_prefix=f"t{uuid.uuid4().hex[:10]}")
    yield p
    p.close()


@pytest.fixture
def kernel_platform(tmp_path, redis_url, monkeypatch):
    """A platform that job kernels connect to as well, through the MLPLAT_* variables they inherit."""
    settings = {"home": str(tmp_path / "h"), "online_store": redis_url, "online_prefix": f"t{uuid.uuid4().hex[:10]}"}
    for key, value in settings.items():
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", value)
    p = mlplat.connect()
    yield p
    p.close()


@pytest.fixture
def second_write_fails(monkeypatch):
    """The second Parquet file written in this test fails with "disk full" (the first and any later succeed)."""
    import pyarrow.parquet as pq

    real_write, calls = pq.write_table, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", fail_second)


@pytest.fixture
def kube_config_file(tmp_path, monkeypatch):
    """A kubeconfig that KubeSpawner loads and never contacts (it only needs one to exist)."""
    from kubernetes_asyncio.config import kube_config

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}]}))
    # kubernetes_asyncio reads $KUBECONFIG once, when imported: point its default there instead.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    return kubeconfig


@pytest.fixture
def driver():
    return Entity("driver", join_keys=["driver_id"])


@pytest.fixture
def driver_stats(driver):
    return FeatureView("driver_stats", entities=[driver], ttl=timedelta(days=2),
                       schema=[Field("rating", "float32"), Field("trips", "int64")])


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """A private PostgreSQL server on a free loopback port (initdb as the postgres user when root)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (make install adds them with apt-get)")
    root = Path(tempfile.mkdtemp(prefix="mlplat-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "db"), "-U", "mlplat", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(root / "db"), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(root), "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg://mlplat@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=mlplat dbname=postgres").close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(30)
    shutil.rmtree(root, ignore_errors=True)
