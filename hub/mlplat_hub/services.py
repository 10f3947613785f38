"""The hub's services and the roles they need: idle culling, the MLflow UI, the job scheduler, the monitor
(prediction-log flusher and Prometheus ``/metrics``), the stream consumer, ``mlplat server`` (server mode),
an admin token.

Each is a JupyterHub *managed* service: the hub starts it, restarts it if it dies
and stops it on shutdown (but ``mlplat server`` on Kubernetes, a Deployment of its own
the hub knows by its token). Each grants the least its work needs.
"""

from __future__ import annotations

import json
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
SERVER = "mlplat-server"
SERVER_CLUSTER_URL = "http://mlplat-server:8585"  # the Service of serving/kubernetes/server.yaml
# What mlplat.server.authentication asks the hub with the server's own token: GET /users/<name> with `groups`
# (read:users:groups) and `admin` (read:users:name), GET /groups/<team> with `properties` (read:groups; the
# narrower read:groups:name shows no properties). Checked against a real hub by tests/e2e/test_server_hub.py.
SERVER_SCOPES = ["read:users:name", "read:users:groups", "read:groups"]


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


def _scheduler(options: HubOptions, env: dict[str, str]) -> dict[str, Any]:
    # Claims each due slot once in the metadata database: safe beside `mlplat up`'s scheduler. In server mode
    # each job's kernel calls the server as its schedule's owner (mlplat.jobs.owners), with accounts as their
    # OS account, instead of running with this service's environment.
    if options.server:
        env = {**env, "MLPLAT_JOB_SERVER_URL": server_url(options)}
    if options.accounts:
        env = {**env, "MLPLAT_JOB_ACCOUNT": options.account_name}
    return {"name": SCHEDULER, "command": [sys.executable, "-m", "mlplat.cli", "scheduler"], "environment": env}


def _monitor(options: HubOptions, env: dict[str, str]) -> dict[str, Any]:
    # Not proxied: Prometheus scrapes it directly (on Kubernetes, the hub pod's port 9464).
    port = _MONITOR_PORT if options.mode == "kubernetes" else kept_port(_ports(options), MONITOR)
    return {"name": MONITOR, "command": [sys.executable, "-m", "mlplat.cli", "monitor", "serve", "--port", str(port)],
            "environment": env}


def _stream(env: dict[str, str]) -> dict[str, Any]:
    # One of a consumer group: safe beside `mlplat up`'s consumer, they share the work.
    return {"name": STREAM, "command": [sys.executable, "-m", "mlplat.cli", "stream"], "environment": env}


def server_url(options: HubOptions) -> str:
    """Where workspaces reach ``mlplat server``: a loopback port kept across restarts, or its Kubernetes Service."""
    if options.mode == "kubernetes":
        return (options.server_url or SERVER_CLUSTER_URL).rstrip("/")
    return options.server_url or f"http://127.0.0.1:{kept_port(_ports(options), SERVER)}"


def running_server_url(options: HubOptions) -> str | None:
    """Where the local hub's ``mlplat server`` listens, as recorded when the hub started (None: not in server
    mode, or never started); unlike :func:`server_url` it chooses no port."""
    if not options.server:
        return None
    if options.mode == "kubernetes" or options.server_url:
        return server_url(options)
    try:
        port = json.loads(_ports(options).read_text()).get(SERVER)
    except (OSError, ValueError, AttributeError):
        return None
    return f"http://127.0.0.1:{port}" if isinstance(port, int) else None


def _server(options: HubOptions, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Locally a managed service listening where its ``url`` says; on Kubernetes its own Deployment, which the hub
    knows by its API token. Its calls to the hub API read users, their groups and the groups' roles, no more."""
    if options.mode == "kubernetes":
        service = {"name": SERVER, "api_token": options.server_token,
                   "info": {"description": "The platform server (mlplat server)", "url": server_url(options)}}
    else:
        # Not MLPLAT_SERVER_URL: it holds the stores itself; the hub gives it JUPYTERHUB_SERVICE_URL to listen at.
        service = {"name": SERVER, "url": server_url(options), "environment": env, "display": False,
                   "command": [sys.executable, "-m", "mlplat.cli", "server"]}
    return service, {"name": SERVER, "services": [SERVER], "scopes": list(SERVER_SCOPES)}


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
    if MLFLOW in options.services and not options.server:  # in server mode MLflow's UI is the server's /mlflow,
        services.append(_mlflow_ui(options, env))          # behind its permissions; this one checks logins only
        user_scopes.append(f"access:services!service={MLFLOW}")
    if SCHEDULER in options.services:
        services.append(_scheduler(options, env))
    if MONITOR in options.services:
        services.append(_monitor(options, env))
    if STREAM in options.services:
        services.append(_stream(env))
    if options.server:
        service, role = _server(options, env)
        services.append(service)
        roles.append(role)
    if options.admin_token:
        service, role = _admin(options.admin_token)
        services.append(service)
        roles.append(role)
    roles.append({"name": "user", "scopes": user_scopes})
    return services, roles
