"""The server extension: wiring only. Handlers live in ``handlers.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jupyter_server.extension.application import ExtensionApp


class PlatformCalls:
    """Runs library calls on ``mlplat.connect()`` (opened on first use), one at a time, off the event loop.

    One worker thread: the server stays responsive during a deploy, and the library (MLflow's
    process-wide tracking URI among it) is never entered by two threads at once.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlplat")
        self._platform: Any = None

    async def run(self, call: Callable[[Any], Any]) -> Any:
        return await asyncio.wrap_future(self._executor.submit(self._call, call))

    def _call(self, call: Callable[[Any], Any]) -> Any:
        if self._platform is None:
            import mlplat

            self._platform = mlplat.connect()
        return call(self._platform)

    def close(self) -> None:
        if self._platform is not None:
            self._executor.submit(self._platform.close).result()
        self._executor.shutdown()


class MlplatLab(ExtensionApp):
    """``/mlplat/api/...``: features, models, lineage, jobs, deploy and schedule, for the Lab extension."""

    name = "mlplat_lab"

    def initialize_handlers(self) -> None:
        from mlplat_lab.handlers import routes

        self.calls = PlatformCalls()
        self.handlers.extend(routes(self.calls))

    async def stop_extension(self) -> None:
        self.calls.close()
