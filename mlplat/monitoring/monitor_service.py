"""``mlplat monitor serve`` as an embedded service: the prediction-log flusher and the Prometheus exporter."""

from __future__ import annotations

import importlib.util
import sys
import urllib.request

from mlplat.config import Settings
from mlplat.services import EmbeddedService, ServiceState, platform_environment


class MonitorService(EmbeddedService):
    """``mlplat monitor serve``: flushes the prediction log to Parquet and serves Prometheus ``/metrics``;
    healthy while ``/metrics`` answers and the flusher makes progress (its heartbeat: each batch or idle wait)."""

    name = "monitor"
    order = 40
    after = ("redis",)  # the prediction log and the counters it exports live there
    stale_after = 10.0

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return importlib.util.find_spec("prometheus_client") is not None

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "monitor", "serve", "--port", str(port),
                "--heartbeat", str(self.heartbeat)]

    def environment(self) -> dict[str, str]:
        return {**platform_environment(self.settings), "MLPLAT_ONLINE_USER": "monitor"}

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/metrics"

    def healthy(self, state: ServiceState) -> bool:
        if not self.progressing(state):
            return False
        try:
            with urllib.request.urlopen(state.url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False
