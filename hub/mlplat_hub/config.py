"""Configure a JupyterHub ``c`` for mlplat workspaces: on one machine, or on Kubernetes.

Both give every workspace the platform's endpoints and a profile (CPU small, CPU
large, GPU x1), make teams JupyterHub groups with shared project folders, cull idle
servers and run the MLflow UI and the job scheduler as hub services. In server mode
(``MLPLAT_HUB_SERVER=1``) ``mlplat server`` runs beside them, workspaces get its URL,
and teams' groups carry their members' roles.
``hub/jupyterhub_config.py`` and ``mlplat hub`` call :func:`configure_from_env`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from mlplat.config import Settings, load_settings
from mlplat.files import private_file, private_home, private_umask
from mlplat.kernels import install_kernels
from mlplat.server.authentication import ADMIN_GROUP
from mlplat.services import free_port
from mlplat_hub.accounts import check_runnable
from mlplat_hub.environment import without_write_credentials, workspace_environment
from mlplat_hub.kubernetes import check_shared, literal, mount_team_folders, reading_online_store, team_volume
from mlplat_hub.options import TEAM_DEFAULT, HubOptions
from mlplat_hub.profiles import apply_profile, kubespawner_profile_list
from mlplat_hub.proxy import PrivateProxy, proxy_command
from mlplat_hub.services import hub_services, server_url
from mlplat_hub.spawner import AccountSpawner, WorkspaceSpawner
from mlplat_hub.workspaces import open_to_accounts

NATIVE = "mlplat_hub.login.NativeAuthenticator"  # imported by JupyterHub, only when used
MINIMUM_PASSWORD = 8  # for sign-ups (native), as for the shared password


def configure_local(c: Any, options: HubOptions, settings: Settings) -> None:
    """Workspaces as processes on this machine, as the hub's account behind a shared password or as their users'
    own accounts (``options.accounts``); hub state in ``options.state_dir``."""
    state = options.state_dir
    # The hub's database, cookie secret (JupyterHub writes it 0600), password and proxy pid are the hub's alone.
    private_home(state)
    private_file(state / "jupyterhub.sqlite")  # an empty file is a new database to SQLite; created 0600
    c.JupyterHub.bind_url = f"http://{options.ip}:{options.port}"
    # The hub's and the proxy's APIs stay on loopback, on ports free now: hubs can share a machine.
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = free_port()
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{free_port()}"
    c.JupyterHub.proxy_class = PrivateProxy
    c.ConfigurableHTTPProxy.command = [proxy_command(options.proxy)]
    # Absolute paths: nothing depends on the directory the hub starts in.
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"

    _configure_login(c, options)
    url = server_url(options) if options.server else ""
    if options.accounts:
        # Each server as its user's own account: it must run this environment, and gets no store of the hub's.
        check_runnable(sys.executable, "mlplat_hub, jupyterhub")
        c.JupyterHub.spawner_class = AccountSpawner
        c.AccountSpawner.account_template = options.account_name
        kernels = open_to_accounts(options.root)  # the kernels, where every account reads them
        env = without_write_credentials(workspace_environment(settings, share_home=False, server_url=url))
    else:
        c.JupyterHub.spawner_class = WorkspaceSpawner
        # The kernels "Python 3 (mlplat)" and "(mlplat, GPU)", for servers that run as the hub's account.
        with private_umask():
            install_kernels(str(state / "jupyter"))
        kernels = state / "jupyter" / "share" / "jupyter"
        env = workspace_environment(settings, share_home=True, server_url=url)
    c.WorkspaceSpawner.workspace_root = str(options.root)
    kernel_path = {"JUPYTER_PATH": str(kernels)}  # also for the scheduler's jobs
    c.WorkspaceSpawner.environment = {**env, **kernel_path}
    _configure_common(c, c.WorkspaceSpawner, options, settings, kernel_path)


def _configure_login(c: Any, options: HubOptions) -> None:
    """Who may log in: any name (or those listed) with the one shared password, trusted people on one machine;
    with accounts each person as themselves (``native``: sign up, approved by an admin; ``pam``; any other)."""
    if options.authenticator == "shared":
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = options.login_password()
    else:
        # nativeauthenticator's, fixed for JupyterHub 6; else an entry point's name (pam) or an import path
        c.JupyterHub.authenticator_class = NATIVE if options.authenticator == "native" else options.authenticator
        c.Authenticator.admin_users = set(options.admins)  # they approve sign-ups (and can reach every server)
        if options.authenticator == "native":
            c.NativeAuthenticator.minimum_password_length = MINIMUM_PASSWORD
            c.NativeAuthenticator.check_common_password = True
    if options.users:
        c.Authenticator.allowed_users = set(options.users)
    else:
        c.Authenticator.allow_all = True  # native: but only once an admin approved the sign-up


def configure_kubernetes(c: Any, options: HubOptions, settings: Settings) -> None:
    """Workspaces as pods (KubeSpawner) of ``options.image``; the site's Helm chart sets auth, proxy and database."""
    check_shared(settings)
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.image = options.image
    c.KubeSpawner.cmd = ["jupyterhub-singleuser"]  # named, so the profile's server options reach it
    c.KubeSpawner.profile_list = kubespawner_profile_list()
    env = workspace_environment(settings, share_home=False, server_url=server_url(options) if options.server else "")
    c.KubeSpawner.environment = literal(reading_online_store(without_write_credentials(env)) if options.server else env)
    c.KubeSpawner.volumes = [team_volume(options.team_claim)]
    c.KubeSpawner.modify_pod_hook = mount_team_folders
    _configure_common(c, c.KubeSpawner, options, settings)


def _configure_common(c: Any, spawner: Any, options: HubOptions, settings: Settings,
                      service_env: dict[str, str] | None = None) -> None:
    # A bad profile in a spawn request is refused with HTTP 400, before anything starts.
    spawner.apply_user_options = apply_profile
    spawner.default_url = "/lab"
    c.JupyterHub.services, c.JupyterHub.load_roles = hub_services(options, settings, service_env)
    # Teams are JupyterHub groups; a workspace links (or mounts) each of its user's team folders.
    c.JupyterHub.load_groups = hub_groups(options)


def hub_groups(options: HubOptions) -> dict[str, dict[str, Any]]:
    """``c.JupyterHub.load_groups``: each team with its members and, as the group properties that
    ``mlplat server`` reads, their roles (``mlplat_role`` for the team, ``mlplat_roles`` per user); the platform
    admins as the group ``mlplat-admins``."""
    groups: dict[str, dict[str, Any]] = {team: {"users": list(members)} for team, members in options.teams.items()}
    for team, roles in options.team_roles.items():
        properties: dict[str, Any] = {}
        if TEAM_DEFAULT in roles:
            properties["mlplat_role"] = roles[TEAM_DEFAULT]
        named = {user: role for user, role in roles.items() if user != TEAM_DEFAULT}
        if named:
            properties["mlplat_roles"] = named
        groups.setdefault(team, {"users": []})["properties"] = properties
    if options.admins:
        groups[ADMIN_GROUP] = {"users": list(options.admins)}
    return groups


def configure_from_env(c: Any, env: Mapping[str, str] = os.environ) -> HubOptions:
    """Configure ``c`` as ``MLPLAT_HUB_MODE`` (local or kubernetes) and the other ``MLPLAT_HUB_*`` say."""
    settings = load_settings()
    options = HubOptions.from_env(settings, env)
    configure = configure_kubernetes if options.mode == "kubernetes" else configure_local
    configure(c, options, settings)
    return options
