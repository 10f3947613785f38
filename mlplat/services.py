"""Embedded services run as child processes: start, reuse, health-check, repair, stop.

Each service records its pid and ports in ``$MLPLAT_HOME/run/<name>.json`` so any
process (a notebook, the CLI, a test) finds and reuses the one already running.
A file lock serialises start-up, so two notebooks never start two servers on
the same data directory. The ports a service had are kept in ``<name>.ports.json``,
which outlives the server: after a crash, a hang or ``mlplat down`` it comes back
where clients already look. A server that runs but does not answer or (services
with a heartbeat) makes no progress is unhealthy; ``ensure`` kills and restarts it.

This module knows no domain. Each service is a subclass of :class:`EmbeddedService` that lives with
its domain (Redis with the online store, Triton with serving, ...) and registers itself under the
entry-point group ``mlplat.services`` (loaded on first use). It says itself whether a configuration
wants it (:meth:`EmbeddedService.wanted`), which services it uses (``after``: those start first and
stop last) and where it starts among the rest (``order``).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from mlplat.config import Settings
from mlplat.errors import ServiceError
from mlplat.files import PRIVATE_UMASK, private_home, private_umask

log = logging.getLogger(__name__)
ENTRY_POINTS = "mlplat.services"  # the group each service registers itself in: name = "module:Class"


@dataclass(frozen=True)
class ServiceState:
    """What a running embedded service recorded about itself."""

    name: str
    pid: int
    port: int
    url: str
    started_at: float
    ports: dict[str, int] = field(default_factory=dict)  # its other ports, by role (Triton: http, metrics)

    @property
    def where(self) -> str:
        """Its URL and other ports, as ``mlplat status`` shows them."""
        return "  ".join([self.url, *(f"{role} 127.0.0.1:{port}" for role, port in self.ports.items())])


@dataclass(frozen=True)
class Health:
    """How one embedded service is doing, as ``mlplat status`` reports it."""

    name: str
    state: ServiceState | None  # None: not running
    problem: str = ""  # why a running service is unhealthy; empty when it is healthy
    progress: float | None = None  # services with a heartbeat: when it last made progress (epoch seconds)
    reported: str = ""  # what a service making progress says it cannot do (a stream view that fails)

    @property
    def healthy(self) -> bool:
        return self.state is not None and not self.problem and not self.reported

    @property
    def summary(self) -> str:
        """``running`` (with its last progress, if it keeps a heartbeat), ``stopped``, ``UNHEALTHY (why)`` or
        ``DEGRADED (what it reports)``: it runs, but part of its work fails, which a restart would not mend."""
        if self.state is None:
            return "stopped"
        if self.problem:
            return f"UNHEALTHY ({self.problem})"
        running = "running" if self.progress is None else f"running (progress {time.time() - self.progress:.0f} s ago)"
        return f"DEGRADED ({self.reported}); {running}" if self.reported else running


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes."""
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - closed below
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def beat(heartbeat: Path, report: str = "") -> None:
    """Record progress in a service's ``heartbeat`` file, holding ``report``: what it cannot do (empty: nothing).
    Replaced whole, so a reader never sees half a report."""
    partial = heartbeat.with_name(f"{heartbeat.name}.partial")
    with private_umask():
        partial.write_text(report)
    os.replace(partial, heartbeat)


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
            # As the servers do: connections a killed server left in TIME_WAIT must not make its port look taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    # A zombie still answers kill(0): reap it if it is ours; another process's is dead all the same.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """True for a process that has exited but is not reaped yet by its parent (Linux's /proc; False elsewhere)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _kill_group(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL a server's process group (it and its workers; a stopped or hung one too) and wait for it to exit."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


class EmbeddedService(abc.ABC):
    """A server the platform starts on a loopback port, one per ``$MLPLAT_HOME``."""

    name: str
    after: tuple[str, ...] = ()  # services it uses: started before it, stopped after it (when they run here)
    order = 50  # where it starts among the others, lower first, as far as ``after`` allows
    start_timeout = 15.0
    hung_after = 10.0  # a started server that has not answered for this long is hung: killed and restarted
    stale_after: float | None = None  # services with a heartbeat: unhealthy after this long without progress
    side_ports: tuple[str, ...] = ()  # roles of other ports it listens on, kept across restarts like its main one

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_file = settings.run_dir / f"{self.name}.json"
        self.ports_file = settings.run_dir / f"{self.name}.ports.json"
        self.log_file = settings.run_dir / f"{self.name}.log"
        self.heartbeat = settings.run_dir / f"{self.name}.heartbeat"
        self.side: dict[str, int] = {}  # the side ports of the server being started, by role (for ``command``)

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """True when ``settings`` ask for this service to run here (not at a remote URL, and installed)."""
        return True

    @abc.abstractmethod
    def command(self, port: int) -> list[str]:
        """The argv that starts the server on ``port`` (and on ``self.side`` ports)."""

    @abc.abstractmethod
    def url(self, port: int) -> str:
        """The URL clients use to reach the server on ``port``."""

    def healthy(self, state: ServiceState) -> bool:
        """True when the server answers requests (services with a heartbeat: when it makes progress)."""
        return self.progressing(state)

    def environment(self) -> dict[str, str] | None:
        """Environment variables for the server process (None: inherit ours)."""
        return None

    def shutdown(self, state: ServiceState) -> None:
        """Ask the server to stop; the default sends SIGTERM to its process group (it and its workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state.pid, signal.SIGTERM)

    def progress(self, state: ServiceState) -> float | None:
        """When the server last made progress (its heartbeat file), None if it has not since it started."""
        try:
            touched = self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            return None
        return touched if touched + 1 >= state.started_at else None

    def reported(self) -> str:
        """What the server wrote into its heartbeat about work it cannot do (empty: none)."""
        try:
            return self.heartbeat.read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def progressing(self, state: ServiceState) -> bool:
        """True when the server's heartbeat is younger than ``stale_after``."""
        touched = self.progress(state)
        return touched is not None and self.stale_after is not None and time.time() - touched < self.stale_after

    def status(self) -> ServiceState | None:
        """The state of the running, healthy server, or None."""
        state = self._read_state()
        if state and _pid_alive(state.pid) and self.healthy(state):
            return state
        return None

    def health(self) -> Health:
        """Whether the server runs and, if it does, whether it answers or makes progress."""
        state = self._read_state()
        if state is None or not _pid_alive(state.pid):
            return Health(self.name, None)
        progress = self.progress(state) if self.stale_after is not None else None
        if self.healthy(state):
            return Health(self.name, state, "", progress, self.reported() if self.stale_after is not None else "")
        if self.stale_after is None:
            return Health(self.name, state, "not answering")
        since = progress or state.started_at
        return Health(self.name, state, f"no progress for {time.time() - since:.0f} s", progress)

    def ensure(self, patience: float | None = None) -> ServiceState:
        """Reuse the running server or start one; return its state.

        A server that runs but is unhealthy (it answered once: its state is recorded only then) gets
        ``patience`` seconds to recover (default ``hung_after``: a busy server answers again), then its
        process group is killed and it starts again on its old ports.
        """
        with self._lock():
            state = self._read_state()
            if state and _pid_alive(state.pid):
                if self._recovers(state, self.hung_after if patience is None else patience):
                    return state
                log.warning("%s (pid %d) is unhealthy (%s); restarting it", self.name, state.pid,
                            self.health().summary)
            if state:  # dead or hung: its workers (same process group) may still hold its ports
                _kill_group(state.pid)
            return self._start()

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server cleanly; return False when none was running. Its ports stay reserved for it."""
        with self._lock():
            state = self._read_state()
            if not state or not _pid_alive(state.pid):
                self.state_file.unlink(missing_ok=True)
                return False
            self.shutdown(state)
            deadline = time.monotonic() + timeout
            while _pid_alive(state.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            _kill_group(state.pid)  # what did not stop in time, and any worker left behind
            self.state_file.unlink(missing_ok=True)
            return True

    def _recovers(self, state: ServiceState, patience: float) -> bool:
        """True when the server is healthy now or becomes so within ``patience`` seconds."""
        deadline = time.monotonic() + patience
        while _pid_alive(state.pid):
            if self.healthy(state):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return False

    def _start(self) -> ServiceState:
        with private_umask():
            self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        before = self._remembered_ports()
        last_error = ""
        for attempt in range(3):  # a free port can be taken between probing and binding
            ports = {role: _port_for(before.get(role) if attempt == 0 else None) for role in ("port", *self.side_ports)}
            port = ports.pop("port")
            self.side = ports
            with private_umask(), open(self.log_file, "ab") as log_file:
                proc = subprocess.Popen(  # what the server writes (data, its own logs) is private too
                    self.command(port), stdout=log_file, stderr=subprocess.STDOUT, env=self.environment(),
                    stdin=subprocess.DEVNULL, start_new_session=True, umask=PRIVATE_UMASK,
                )
            state = ServiceState(self.name, proc.pid, port, self.url(port), time.time(), ports)
            deadline = time.monotonic() + self.start_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if self.healthy(state):
                    with private_umask():
                        self.state_file.write_text(json.dumps(asdict(state)))
                        self.ports_file.write_text(json.dumps({"port": port, **ports}))
                    if before and port != before.get("port"):
                        log.warning("%s: port %s was taken; it listens on %d now", self.name, before.get("port"), port)
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

    def _remembered_ports(self) -> dict[str, int]:
        """The ports the server had last time (its state file is gone after a stop; this one stays)."""
        try:
            return {role: int(port) for role, port in json.loads(self.ports_file.read_text()).items()}
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return {}

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


def _port_for(previous: int | None) -> int:
    """``previous`` when it is free (a server that just died may take a moment to let go of it), else a free port."""
    return previous if previous and _port_free(previous, wait=2.0) else free_port()


def kept_port(record: Path, role: str) -> int:
    """A port for ``role`` that stays across restarts: the one ``record`` (a JSON file) holds for it while it is
    free, else a free one, recorded there for next time."""
    try:
        ports = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):
        ports = {}
    previous = ports.get(role) if isinstance(ports, dict) else None
    port = _port_for(previous if isinstance(previous, int) else None)
    if port != previous:
        with private_umask():
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({**(ports if isinstance(ports, dict) else {}), role: port}))
    return port


def platform_environment(settings: Settings) -> dict[str, str]:
    """What a service process needs to open the same platform; an embedded online store it finds itself,
    so it can follow Redis when Redis is restarted."""
    return {**os.environ, "MLPLAT_HOME": str(settings.home), "MLPLAT_ONLINE_STORE": settings.online_store,
            "MLPLAT_ONLINE_PREFIX": settings.online_prefix, "MLPLAT_OFFLINE_STORE": settings.offline_store,
            "MLPLAT_REGISTRY": settings.registry}


@functools.cache
def registered() -> dict[str, metadata.EntryPoint]:
    """The services registered in the ``mlplat.services`` entry-point group, by name, not loaded yet."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINTS):
        found.setdefault(entry.name, entry)
    if not found:
        raise ServiceError(f"No services are registered in the entry-point group {ENTRY_POINTS!r}: mlplat's "
                           "installation is out of date. Reinstall it (`pip install -e .` in its checkout, or "
                           "`make install`).")
    return found


@functools.cache
def service_class(name: str) -> type[EmbeddedService]:
    """The class registered as ``name`` (imported on first use)."""
    cls = registered()[name].load()
    if not (isinstance(cls, type) and issubclass(cls, EmbeddedService)) or cls.name != name:
        raise ServiceError(f"The entry point {name!r} in {ENTRY_POINTS!r} must name an EmbeddedService whose "
                           f"name is {name!r}; it names {cls!r}.")
    return cls


def embedded_services(settings: Settings, only: tuple[str, ...] | None = None) -> list[EmbeddedService]:
    """The services these settings ask to run here (``only`` those named), each after those it uses."""
    classes = [service_class(name) for name in registered() if only is None or name in only]
    return [cls(settings) for cls in _start_order([cls for cls in classes if cls.wanted(settings)])]


def _start_order(classes: list[type[EmbeddedService]]) -> list[type[EmbeddedService]]:
    """``classes`` with each after those it names in ``after``, otherwise by their ``order`` (then name)."""
    present = {cls.name for cls in classes}
    ordered: list[type[EmbeddedService]] = []
    pending = sorted(classes, key=lambda cls: (cls.order, cls.name))
    while pending:
        placed = {cls.name for cls in ordered}
        # A cycle (no class ready) is broken by ``order`` rather than refused.
        ready = next((c for c in pending if all(d in placed or d not in present for d in c.after)), pending[0])
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def health(settings: Settings) -> list[Health]:
    """Each embedded service: stopped, running, or running but unhealthy (not answering, no progress)."""
    return [service.health() for service in embedded_services(settings)]


def up_each(settings: Settings, only: tuple[str, ...] | None = None) -> list[tuple[str, ServiceState | Exception]]:
    """Start, reuse or repair (restart when unhealthy) each embedded service (``only`` those named).

    One service that fails does not keep the others from starting: each gets its state or its error.
    """
    done: list[tuple[str, ServiceState | Exception]] = []
    private_home(settings.home)  # a home made before file modes were kept is tightened here
    for service in embedded_services(settings, only):
        try:
            done.append((service.name, service.ensure()))
        except Exception as exc:  # reported with the others: one broken service must not stop the rest
            done.append((service.name, exc))
    return done


def up(settings: Settings, only: tuple[str, ...] | None = None) -> list[ServiceState]:
    """Start (or reuse, or repair) the embedded services (``only`` those named); return their states.

    Every service is tried; the first failure is raised after the others have started.
    """
    states = []
    for _, outcome in up_each(settings, only):
        if isinstance(outcome, Exception):
            raise outcome
        states.append(outcome)
    return states


def down(settings: Settings) -> list[str]:
    """Stop every embedded service, those that use others first; return the names of those that were running."""
    found = embedded_services(settings)
    stopped = {s.name for s in reversed(found) if s.stop()}
    return [s.name for s in found if s.name in stopped]
