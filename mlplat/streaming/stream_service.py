"""``mlplat stream`` as an embedded service: the consumer that keeps stream feature views fresh."""

from __future__ import annotations

import sys

from mlplat.services import EmbeddedService, platform_environment


class StreamService(EmbeddedService):
    """``mlplat stream``: keeps stream feature views fresh; healthy while it makes progress (its heartbeat,
    touched after each batch applied or each wait with nothing to do). Idle until a stream view is applied."""

    name = "stream"
    order = 50
    after = ("redis",)  # the streams it reads and the online store it writes
    stale_after = 10.0
    hung_after = 0.0

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat.cli", "stream", "--heartbeat", str(self.heartbeat)]

    def environment(self) -> dict[str, str]:
        return {**platform_environment(self.settings), "MLPLAT_ONLINE_USER": "consumer"}

    def url(self, port: int) -> str:
        return f"file://{self.heartbeat}"
