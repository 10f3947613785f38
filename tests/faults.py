"""Helpers for tests that inject faults into real services: wait for recovery, take a server's port away."""

from __future__ import annotations

import os
import signal
import socket
import time

from mlplat import services
from mlplat.features.redis_service import RedisService


def wait_for(condition, timeout: float = 30.0, what: str = "the condition") -> float:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds. Return the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def take_the_port_of_redis(settings, squatter: socket.socket) -> services.ServiceState:
    """SIGKILL the embedded Redis and listen on its port with ``squatter``: it has to move. Return its old state."""
    service = RedisService(settings)
    with service._lock():  # no client restarts it before the port is taken
        killed = service.status()
        os.kill(killed.pid, signal.SIGKILL)
        wait_for(lambda: not services._pid_alive(killed.pid), what="redis dying")
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # For a moment the dead server's closing connections (FIN-WAIT-1) still hold its port, even for SO_REUSEADDR.
        wait_for(lambda: _bound(squatter, killed.port), what=f"binding port {killed.port}")
        squatter.listen()
    return killed


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
