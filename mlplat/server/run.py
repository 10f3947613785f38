"""Start ``mlplat server``: the platform of this install's settings behind :class:`~mlplat.server.app.PlatformServer`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlplat.errors import ConfigError
from mlplat.identity import Identity
from mlplat.server.authentication import Authenticator, HubAuthenticator, JobTokenAuthenticator, LocalAuthenticator


def authenticator(hub_api_url: str | None, tokens: str | None) -> Authenticator:
    """The hub's token check (a hub service's own ``JUPYTERHUB_API_TOKEN`` asks it), or a tokens file's."""
    if tokens:
        return LocalAuthenticator(read_tokens(Path(tokens)))
    service_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not hub_api_url or not service_token:
        raise ConfigError("mlplat server checks tokens with JupyterHub: run it as a hub service (the hub sets "
                          "JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN), or pass --tokens FILE for fixed tokens.")
    return HubAuthenticator(hub_api_url, service_token)


def read_tokens(path: Path) -> dict[str, Identity]:
    """``{token: {name: alice, roles: {a: editor}, admin: false}}`` from a YAML file only its owner may read."""
    import yaml

    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} holds tokens and is readable by others: chmod 600 {path}.")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return {str(token): Identity(str(who["name"]), dict(who.get("roles") or {}), bool(who.get("admin")))
                for token, who in data.items()}
    except (AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: each token maps to {{name: ..., roles: {{team: role}}, admin: bool}} "
                          f"({exc}).") from None


def address(host: str | None, port: int | None) -> tuple[str, int]:
    """Where to listen: the flags, else where the hub said this service lives (``JUPYTERHUB_SERVICE_URL``)."""
    given = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    return host or given.hostname or "127.0.0.1", port or given.port or 8585


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def serve(host: str, port: int, auth: Authenticator, **overrides: Any) -> None:
    """Run the server until interrupted, on an embedded platform of this install's settings, with MLflow behind
    it at ``/mlflow`` (:mod:`mlplat.server.mlflow_proxy`); besides ``auth``'s tokens it takes the job tokens of
    this install's scheduler."""
    import uvicorn

    from mlplat.config import load_settings
    from mlplat.job_tokens import JobTokens
    from mlplat.platform import Platform
    from mlplat.server.app import PlatformServer
    from mlplat.server.mlflow_proxy import MlflowProxy, start_backing
    from mlplat.server.permissions import Ownership

    # The backing MLflow server holds the tracking store and serves the artifacts. The server's own platform uses
    # MLflow through it too: models logged through the proxy live at mlflow-artifacts:/ URIs, which only an MLflow
    # server resolves.
    settings = load_settings(server_url="", **overrides)
    auth = JobTokenAuthenticator(auth, JobTokens(settings.run_dir))  # scheduled jobs call as their owners
    tracking, backing = start_backing(settings)
    platform = Platform.open(server_url="", **{**overrides, "tracking": tracking})  # the server holds the stores
    mlflow = MlflowProxy(tracking, auth, Ownership(platform))
    # uvicorn stops on SIGTERM (the hub's, Kubernetes') and then raises it again: with the default handler that
    # would end the process here, before the backing MLflow server is stopped below.
    signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(PlatformServer(platform, auth, extra_routes=mlflow.routes()).app, host=host, port=port,
                    log_level="warning", timeout_keep_alive=75)
    finally:
        platform.close()
        if backing is not None:
            backing.stop()
