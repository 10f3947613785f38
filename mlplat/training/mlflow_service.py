"""The MLflow tracking UI, which the platform runs over its own SQLite tracking store."""

from __future__ import annotations

import os
import sys
import urllib.request

from mlplat.config import Settings
from mlplat.services import EmbeddedService, ServiceState


class MlflowService(EmbeddedService):
    """The MLflow tracking UI over the platform's own tracking store and artifacts.

    The library reads and writes the store directly; this server is for people
    (and for clients elsewhere), so ``connect()`` does not need it.
    """

    name = "mlflow"
    order = 10
    start_timeout = 60.0

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return settings.tracking.startswith("sqlite:///")  # a tracking server elsewhere has its own UI

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", self.settings.tracking, *self.artifact_options(), "--workers", "1",
        ]

    def artifact_options(self) -> list[str]:
        """Where new experiments keep their artifacts: the platform's artifact root, as the library itself does."""
        return ["--default-artifact-root", self.settings.artifacts]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def _start(self) -> ServiceState:
        from mlplat.registry.tracking import prepare_store

        prepare_store(self.settings)  # the server would create a new store's tables itself, racing the clients
        return super()._start()

    def healthy(self, state: ServiceState) -> bool:
        try:
            with urllib.request.urlopen(f"{state.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


class ServedMlflow(MlflowService):
    """The MLflow server behind ``mlplat server`` (see :mod:`mlplat.server.mlflow_proxy`), on loopback.

    It serves the artifacts itself (``--serve-artifacts``, stored under the platform's artifact root), and new
    experiments get ``mlflow-artifacts:/<experiment id>`` locations, so a client anywhere that reaches the platform
    server loads and logs models through it. Its paths start with ``/mlflow`` as the platform server's do, so its
    pages need no rewriting. The platform server starts (or reuses) it and stops it when it stops.
    """

    name = "served-mlflow"
    prefix = "/mlflow"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return not settings.tracking.startswith(("http://", "https://"))  # a tracking server elsewhere serves itself

    def command(self, port: int) -> list[str]:
        return [*super().command(port), "--static-prefix", self.prefix]

    def artifact_options(self) -> list[str]:
        return ["--serve-artifacts", "--artifacts-destination", self.settings.artifacts,
                "--default-artifact-root", "mlflow-artifacts:/"]

    def url(self, port: int) -> str:
        return super().url(port) + self.prefix  # its health check then finds {prefix}/health

    def environment(self) -> dict[str, str]:
        # No job runner (eight huey workers running prompt optimisations and judges): nothing mlplat serves uses it.
        return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
