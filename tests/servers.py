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
def running_server(platform: Any, authenticator: Authenticator) -> Iterator[str]:
    """Serve ``platform`` as ``mlplat server`` does; yields its URL, stops it on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(PlatformServer(platform, authenticator).app, host="127.0.0.1", port=port,
                                           log_level="warning"))
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
