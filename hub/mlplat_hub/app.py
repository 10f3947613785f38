"""``mlplat hub``: JupyterHub with mlplat workspaces on this machine, started, reused and stopped like ``mlplat up``.

The hub runs as ``python -m mlplat_hub`` in its own process group, records itself in
``$MLPLAT_HOME/run/hub.json`` and stops on SIGTERM, taking the workspace servers, the
hub services and the proxy it started with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import urllib.request

from mlplat.config import Settings
from mlplat.errors import HubError, ServiceError
from mlplat.services import EmbeddedService, ServiceState
from mlplat_hub.options import PREFIX, HubOptions
from mlplat_hub.services import running_server_url


class HubService(EmbeddedService):
    """JupyterHub in local mode, on ``ip`` and ``port`` (a free one if None)."""

    name = "hub"
    start_timeout = 60.0

    def __init__(self, settings: Settings, ip: str = "127.0.0.1", port: int | None = None):
        super().__init__(settings)
        self.ip = ip
        self.port = port

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlplat_hub", "--ip", self.ip, "--port", str(self.port or port)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MLPLAT_HOME": str(self.settings.home), f"{PREFIX}MODE": "local"}

    def url(self, port: int) -> str:
        host = "127.0.0.1" if self.ip in ("0.0.0.0", "") else self.ip
        return f"http://{host}:{self.port or port}/"

    def healthy(self, state: ServiceState) -> bool:
        # The proxy answers once the hub has registered its routes (a POST sent earlier gets 404).
        try:
            with urllib.request.urlopen(f"{state.url}hub/api/", timeout=1) as response:
                return response.status == 200 and "version" in json.loads(response.read())
        except (OSError, ValueError):
            return False


@dataclasses.dataclass(frozen=True)
class RunningHub:
    """Where the hub answers and how to log in."""

    url: str
    pid: int
    password: str | None  # the shared one; None: each person logs in as themselves (MLPLAT_HUB_AUTHENTICATOR)
    users: tuple[str, ...] | None  # None: any user name
    server_url: str | None = None  # server mode: where `mlplat server` answers (MLPLAT_SERVER_URL)


def start_hub(settings: Settings, ip: str = "127.0.0.1", port: int | None = None) -> RunningHub:
    """Start the hub (or find the one running for this ``$MLPLAT_HOME``); return where it answers."""
    options = HubOptions.from_env(settings)
    service = HubService(settings, ip, port)
    state = service.status()
    if state is None:
        try:
            state = service.ensure()
        except ServiceError as exc:  # its message ends "run `mlplat up` again"
            raise HubError(str(exc).replace("`mlplat up`", "`mlplat hub`")) from None
    password = options.login_password() if options.authenticator == "shared" else None
    return RunningHub(state.url, state.pid, password, options.users, running_server_url(options))


def stop_hub(settings: Settings) -> bool:
    """Stop the hub and everything it started; False when none was running."""
    return HubService(settings).stop(timeout=60.0)
