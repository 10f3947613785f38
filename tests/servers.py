"""A real ``mlplat server`` for tests: uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from mlplat.server.app import PlatformServer
from mlplat.server.authentication import Authenticator
from mlplat.services import free_port


@contextmanager
def running_server(platform: Any, authenticator: Authenticator, extra_routes: list | None = None) -> Iterator[str]:
    """Serve ``platform`` as ``mlplat server`` does (``extra_routes``: MLflow's, say); yields its URL, stops it on
    exit."""
    port = free_port()
    app = PlatformServer(platform, authenticator, extra_routes).app
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def running_server_with_mlflow(authenticator: Authenticator, **settings: Any) -> Iterator[tuple[str, Any]]:
    """``(url, platform)``: ``mlplat server`` with MLflow behind it at ``url/mlflow``, as ``mlplat serve`` runs it,
    on the platform of ``settings`` (which opens through the backing MLflow server, as the server's does)."""
    import mlplat
    from mlplat.config import load_settings
    from mlplat.server.mlflow_proxy import MlflowProxy, start_backing
    from mlplat.server.permissions import Ownership

    tracking, backing = start_backing(load_settings(server_url="", **settings))
    platform = mlplat.connect(server_url="", **{**settings, "tracking": tracking})
    try:
        routes = MlflowProxy(tracking, authenticator, Ownership(platform)).routes()
        with running_server(platform, authenticator, routes) as url:
            yield url, platform
    finally:
        platform.close()
        if backing is not None:
            backing.stop()
