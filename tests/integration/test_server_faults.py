"""``mlplat server`` as a process: killed, it fails its callers clearly; restarted, the same clients go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from mlplat.errors import ServerUnavailable
from mlplat.remote.platform import ServerModePlatform
from mlplat.services import free_port
from mlplat.training.mlflow_service import ServedMlflow


def start(home, online_store: str, port: int, tokens) -> subprocess.Popen:
    env = {**os.environ, "MLPLAT_HOME": str(home), "MLPLAT_ONLINE_STORE": online_store}
    server = subprocess.Popen([sys.executable, "-m", "mlplat.cli", "server", "--port", str(port), "--tokens",
                               str(tokens)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError("mlplat server did not start")


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("t-ann: {name: ann, roles: {a: editor}}\n")
    path.chmod(0o600)
    return path


def test_a_killed_server_fails_calls_clearly_and_clients_go_on_after_its_restart(tmp_path, demo_platform, tokens,
                                                                                  monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):  # the client sets them: restore them after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    backend = demo_platform(tmp_path / "home", drivers=10, customers=5, days=2, trips=100, materialize=False)
    online = backend.settings.online_store
    port = free_port()
    server = start(backend.settings.home, online, port, tokens)
    try:
        ann = ServerModePlatform.open(token="t-ann", server_url=f"http://127.0.0.1:{port}",
                                      home=str(backend.settings.home), online_store=online,
                                      online_prefix=backend.settings.online_prefix)
        views = sorted(v.name for v in ann.features.list_views())
        assert "driver_stats" in views
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{port}.*cannot be reached"):
            ann.features.list_views()
        server = start(backend.settings.home, online, port, tokens)  # as the hub restarts its services
        assert sorted(v.name for v in ann.features.list_views()) == views
    finally:
        server.kill()
        server.wait(10)
        ServedMlflow(backend.settings).stop()  # the MLflow a killed server leaves for its restart to reuse


def test_a_tokens_file_others_can_read_is_refused(tmp_path, tokens):
    tokens.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "mlplat.cli", "server", "--port", str(free_port()), "--tokens",
                           str(tokens)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MLPLAT_HOME": str(tmp_path / "h")})
    assert done.returncode != 0 and "chmod 600" in done.stderr
