"""The hub's services and the roles they need: idle culling, the MLflow UI, the job scheduler, the monitor
(prediction-log flusher and Prometheus ``/metrics``), the stream consumer, an admin token.

Each is a JupyterHub *managed* service: the hub starts it, restarts it if it dies
and stops it on shutdown. Each grants the least its work needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlplat.config import Settings
from mlplat.services import kept_port
from mlplat_hub.environment import platform_environment
from mlplat_hub.options import HubOptions

CULLER = "idle-culler"
MLFLOW = "mlflow"
SCHEDULER = "scheduler"
MONITOR = "monitor"
STREAM = "stream"
_MONITOR_PORT = 9464  # Prometheus scrapes it; the port registered for Prometheus exporters of this kind
ADMIN = "mlplat-admin"
_MLFLOW_CLUSTER_PORT = 8181  # fixed on Kubernetes, where the proxy pod reaches it through the hub's Service


def _culler(timeout: int) -> tuple[dict[str, Any], dict[str, Any]]:
    service = {"name": CULLER, "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}"]}
    # What jupyterhub-idle-culler documents for culling servers (not users).
    role = {"name": CULLER, "services": [CULLER],
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}
    return service, role


def _mlflow_ui(options: HubOptions, env: dict[str, str]) -> dict[str, Any]:
    host = options.service_host or ("hub" if options.mode == "kubernetes" else "127.0.0.1")
    port = _MLFLOW_CLUSTER_PORT if options.mode == "kubernetes" else kept_port(_ports(options), MLFLOW)
    # Proxied at /services/mlflow/; mlplat_hub.mlflow_ui lets in only users logged in to the hub.
    return {"name": MLFLOW, "url": f"http://{host}:{port}", "command": [sys.executable, "-m", "mlplat_hub.mlflow_ui"],
            "environment": env, "oauth_no_confirm": True, "display": True,
            "info": {"description": "Experiments, runs and registered models (MLflow UI)"}}


def _ports(options: HubOptions) -> Path:
    """Where a local hub keeps its services' ports, so a restarted hub serves them where they were (Prometheus
    scrapes the monitor at a fixed address)."""
    return options.state_dir / "ports.json"


def _scheduler(env: dict[str, str]) -> dict[str, Any]:
    # Claims each due slot once in the metadata database: safe beside `mlplat up`'s scheduler.
    return {"name": SCHEDULER, "command": [sys.executable, "-m", "mlplat.cli", "scheduler"], "environment": env}


def _monitor(options: HubOptions, env: dict[str, str]) -> dict[str, Any]:
    # Not proxied: Prometheus scrapes it directly (on Kubernetes, the hub pod's port 9464).
    port = _MONITOR_PORT if options.mode == "kubernetes" else kept_port(_ports(options), MONITOR)
    return {"name": MONITOR, "command": [sys.executable, "-m", "mlplat.cli", "monitor", "serve", "--port", str(port)],
            "environment": env}


def _stream(env: dict[str, str]) -> dict[str, Any]:
    # One of a consumer group: safe beside `mlplat up`'s consumer, they share the work.
    return {"name": STREAM, "command": [sys.executable, "-m", "mlplat.cli", "stream"], "environment": env}


def _admin(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    service = {"name": ADMIN, "api_token": token}
    role = {"name": ADMIN, "services": [ADMIN],
            "scopes": ["admin:users", "admin:groups", "admin:servers", "access:servers"]}
    return service, role


def hub_services(options: HubOptions, settings: Settings, extra_env: dict[str, str] | None = None,
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``c.JupyterHub.services`` and ``c.JupyterHub.load_roles`` for ``options``.

    ``extra_env`` goes to the services with the platform's settings: the scheduler runs notebooks
    on the workspaces' kernels, so it needs their ``JUPYTER_PATH``.
    """
    env = {**platform_environment(settings, share_home=True), **(extra_env or {})}
    services: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    user_scopes = ["self"]  # JupyterHub's default user role, extended below
    if options.cull_timeout:
        service, role = _culler(options.cull_timeout)
        services.append(service)
        roles.append(role)
    if MLFLOW in options.services:
        services.append(_mlflow_ui(options, env))
        user_scopes.append(f"access:services!service={MLFLOW}")
    if SCHEDULER in options.services:
        services.append(_scheduler(env))
    if MONITOR in options.services:
        services.append(_monitor(options, env))
    if STREAM in options.services:
        services.append(_stream(env))
    if options.admin_token:
        service, role = _admin(options.admin_token)
        services.append(service)
        roles.append(role)
    roles.append({"name": "user", "scopes": user_scopes})
    return services, roles
