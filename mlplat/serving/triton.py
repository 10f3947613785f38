"""The local Triton Inference Server: the ``tritonserver`` binary from the nvidia-pytriton wheel.

That build has only the python backend, and its python-backend stub needs
numpy < 2, so it lives in its own virtual environment (``triton_env``, made by
``make triton``), which goes first on the server's ``PATH``. The stub is copied
beside the python backend, and mlplat's ``onnxruntime`` python-based backend
(``backend/model.py``) is installed so standard ONNX model repositories load.

Its gRPC, HTTP and metrics ports are kept across restarts, and whoever starts it
(``mlplat up``, a deploy, a client whose server died or hung) loads every deployed model.

Model control is the platform's alone: the server is started with its model-repository, shared-memory,
trace and logging APIs restricted (gRPC and HTTP) to callers that send the header
:data:`~mlplat.serving.target.CONTROL_HEADER` with a secret made once per install and kept, mode 0600,
in ``$MLPLAT_HOME/run/triton.secret``. Inference, health, metadata and statistics stay open to any client.
tritonserver takes the secret only on its command line, which any account may read in ``/proc``; a small
preloaded library (``hide_secret.c``, built with the machine's C compiler on first start) masks it there
before the server's ``main`` runs. Without a compiler the server still starts, with a warning.
:class:`EmbeddedTriton` is the serving target over it (:mod:`mlplat.serving.target`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from functools import cached_property
from pathlib import Path

from mlplat.config import EMBEDDED, Settings
from mlplat.errors import ServiceBinaryNotFound, ServingError
from mlplat.files import secret_file
from mlplat.services import EmbeddedService, ServiceState
from mlplat.serving.target import (
    CONTROL_HEADER,
    GRPC_CONTROL_HEADER,
    Endpoints,
    ServingTarget,
    TritonSession,
    answers,
    load_deployed,
)

log = logging.getLogger(__name__)
BACKEND_SHIM = Path(__file__).parent / "backend" / "model.py"
HIDE_SECRET = Path(__file__).parent / "hide_secret.c"


def triton_installed(settings: Settings) -> bool:
    """True when ``triton_env`` holds a tritonserver binary."""
    return bool(settings.triton_env) and any(Path(settings.triton_env).glob(_SERVER_GLOB))


_SERVER_GLOB = "lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"
# The APIs that change the server (load, unload, repository index; shared-memory regions; tracing; logging):
# only callers sending CONTROL_HEADER reach them. Inference, health, metadata and statistics stay open.
RESTRICTED = "model-repository,shared-memory,trace,logging"


def control_secret(settings: Settings) -> str:
    """This install's Triton model-control secret, made on first use and kept in ``run/triton.secret`` (0600)."""
    path = settings.run_dir / "triton.secret"
    secret = secret_file(path)
    if not secret:  # never start Triton with model control open
        raise ServingError(f"{path} is empty. Delete it, then restart Triton (`mlplat down` and `mlplat up`): a new "
                           "secret is made.")
    return secret


class TritonService(EmbeddedService):
    """tritonserver with explicit model control on loopback gRPC, HTTP and metrics ports."""

    name = "triton"
    order = 20
    after = ("redis",)  # the _by_id models read their features there
    start_timeout = 60.0
    side_ports = ("http", "metrics")

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return settings.triton_url == EMBEDDED and triton_installed(settings)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.root = settings.home / "triton"
        self.models = self.root / "models"

    @cached_property
    def server_dir(self) -> Path:
        found = sorted(Path(self.settings.triton_env).glob(_SERVER_GLOB))
        if not found:
            raise ServiceBinaryNotFound(
                f"No tritonserver in {self.settings.triton_env}. Create it with `make triton` (a venv with "
                "nvidia-pytriton==0.7.0, onnxruntime and numpy<2), or set triton_env to such a venv."
            )
        return found[0].parent.parent

    @cached_property
    def _python(self) -> tuple[str, str]:
        """(version, LIBDIR) of the triton env's interpreter: the stub must match and load that libpython."""
        python = Path(self.settings.triton_env) / "bin" / "python"
        out = subprocess.run([str(python), "-c", "import sys, sysconfig; print(f'{sys.version_info[0]}."
                              "{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))"],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], out[1]

    def _backends(self) -> Path:
        backends = self.root / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in (self.server_dir / "backends" / "python").iterdir():
            if item.is_file():
                _install(item, python / item.name)
        _install(self.server_dir / "python_backend_stubs" / self._python[0] / "triton_python_backend_stub",
                 python / "triton_python_backend_stub")
        (backends / "onnxruntime").mkdir(exist_ok=True)
        _install(BACKEND_SHIM, backends / "onnxruntime" / "model.py")
        return backends

    def command(self, port: int) -> list[str]:
        return self.server_command(self.models, port, self.side["http"], self.side["metrics"],
                                   secret=control_secret(self.settings))

    def control_headers(self) -> dict[str, str]:
        """What every model-control call to this server sends (over gRPC)."""
        return {GRPC_CONTROL_HEADER: control_secret(self.settings)}

    def server_command(self, models: Path, grpc: int, http: int, metrics: int, secret: str = "") -> list[str]:
        """The argv of a ``tritonserver`` serving the repository ``models`` on these loopback ports, with
        explicit model control (restricted to callers sending CONTROL_HEADER: ``secret``, when given); run it
        with :meth:`environment`."""
        models.mkdir(parents=True, exist_ok=True)
        restricted = [f"--grpc-restricted-protocol={RESTRICTED}:{CONTROL_HEADER}={secret}",
                      f"--http-restricted-api={RESTRICTED}:{CONTROL_HEADER}={secret}"] if secret else []
        return [
            str(self.server_dir / "bin" / "tritonserver"), "--model-repository", str(models),
            "--backend-directory", str(self._backends()), "--model-control-mode", "explicit",
            "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
            "--http-address", "127.0.0.1", "--http-port", str(http),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
            "--exit-timeout-secs", "5", "--allow-gpu-metrics", "false", "--pinned-memory-pool-byte-size", "0",
            "--log-verbose", "0", *restricted,
        ]

    def _start(self) -> ServiceState:
        """Start the server and load what is deployed (it starts empty in explicit mode), before anyone uses it."""
        state = super()._start()
        with TritonSession(Endpoints(state.url), headers=self.control_headers()) as triton:
            failed = load_deployed(triton, self.models)
        if failed:
            log.warning("Triton started without %s: %s", ", ".join(failed), "; ".join(failed.values()))
        return state

    def metrics_url(self) -> str | None:
        """Triton's own Prometheus endpoint (queue, compute and request counts per model), when it runs."""
        state = self.status()
        return (_endpoints(state).metrics or None) if state else None

    def _hide_secret(self) -> Path | None:
        """The library that masks the secret in tritonserver's command line, built here when missing or stale;
        None (with a warning) when it cannot be built."""
        source, built = self.root / "hide_secret.c", self.root / "hide_secret.so"
        if built.exists() and source.exists() and source.read_bytes() == HIDE_SECRET.read_bytes():
            return built
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        problem = "no C compiler (cc) on PATH"
        if compiler:
            self.root.mkdir(parents=True, exist_ok=True)
            partial = self.root / f"hide_secret.{os.getpid()}.so"
            out = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(HIDE_SECRET)],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                os.replace(partial, built)
                shutil.copyfile(HIDE_SECRET, source)
                return built
            partial.unlink(missing_ok=True)
            problem = f"{compiler} failed: {out.stderr.strip()[-300:]}"
        log.warning("Triton's model-control secret shows in its command line to every local account (%s); "
                    "install a C compiler, or run Triton where other accounts cannot see its processes.", problem)
        return None

    def environment(self) -> dict[str, str]:
        libs = self.server_dir.parent.parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        hide = self._hide_secret()
        if hide:
            env["LD_PRELOAD"] = os.pathsep.join(filter(None, [str(hide), env.get("LD_PRELOAD")]))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [self._python[1], str(libs), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(self.settings.triton_env) / "bin"), env.get("PATH", "")])
        return env

    def url(self, port: int) -> str:
        return f"127.0.0.1:{port}"

    def healthy(self, state: ServiceState) -> bool:
        return answers(state.url)


class EmbeddedTriton(ServingTarget):
    """The serving target of the Triton the platform runs (:class:`TritonService`): started on first use, on the
    ports it had before, with every deployed model; restarted when it died or hangs."""

    onnx_runner = BACKEND_SHIM

    def __init__(self, settings: Settings):
        self.service = TritonService(settings)
        self.models = self.service.models
        self._state: ServiceState | None = None  # the server last found running

    def control_headers(self) -> dict[str, str]:
        return self.service.control_headers()

    def ensure(self, patience: float | None = None) -> Endpoints:
        self._state = self.service.ensure(patience)
        return _endpoints(self._state)

    def where(self) -> Endpoints | None:
        state = self.service.status()
        return _endpoints(state) if state else None

    def recover(self, late: bool) -> bool:
        """Restart a dead server, or one that neither answered by the deadline nor answers a health check
        within a second; a server that is only slow is kept, and then the request is not sent again."""
        before = self._state
        self.ensure(patience=1.0 if late else None)
        return not late or before is None or self._state.pid != before.pid


def _endpoints(state: ServiceState) -> Endpoints:
    http, metrics = state.ports.get("http"), state.ports.get("metrics")
    return Endpoints(state.url, f"127.0.0.1:{http}" if http else "",
                     f"http://127.0.0.1:{metrics}/metrics" if metrics else "")


def _install(source: Path, target: Path) -> None:
    """Copy unless the same file is there already (a running stub binary cannot be overwritten)."""
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copy2(source, target)
        target.chmod(source.stat().st_mode & 0o700)  # the home's files are the owner's alone (mlplat.files)
