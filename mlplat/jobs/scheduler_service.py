"""``mlplat scheduler`` as an embedded service: it runs the due slots of scheduled notebook jobs."""

from __future__ import annotations

import importlib.util
import os
import sys

from mlplat.config import Settings
from mlplat.services import EmbeddedService


class SchedulerService(EmbeddedService):
    """``mlplat scheduler``: runs due slots of scheduled notebook jobs; healthy while it ticks (its heartbeat)."""

    name = "scheduler"
    order = 30
    after = ("redis",)  # its jobs open the platform
    interval = 30.0
    stale_after = 3 * interval
    hung_after = 0.0  # a stale heartbeat has had ``stale_after`` to recover already

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return bool(importlib.util.find_spec("papermill") and importlib.util.find_spec("croniter"))

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "scheduler", "--interval", str(self.interval),
                "--heartbeat", str(self.heartbeat)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MLPLAT_HOME": str(self.settings.home)}

    def url(self, port: int) -> str:
        return f"file://{self.heartbeat}"
