"""What a workspace server knows: the platform's endpoints, its user, team and profile.

:func:`workspace_environment` is a ``Spawner.environment`` mapping, the same for the
local spawner and KubeSpawner: fixed values for the platform settings, callables
(JupyterHub calls them with the spawner at spawn time) for what depends on the user.
Inside the server, ``mlplat.connect()`` then reads the hub's registry, tracking
store, online and offline stores, and records the hub user on registry changes.
In server mode ``MLPLAT_SERVER_URL`` names ``mlplat server`` too: ``mlplat.connect()``
sends its calls there with the workspace's ``JUPYTERHUB_API_TOKEN``, and the server,
not ``MLPLAT_USER``, says who the user is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlplat.config import Settings
from mlplat.server.authentication import ADMIN_GROUP
from mlplat_hub.profiles import DEFAULT_PROFILE, profile_from_options

# Write credentials only mlplat server holds: the metadata database, MLflow's store (reached through the server)
# and the online store's admin URL (workspaces read it as a reader).
SERVER_ONLY = ("MLPLAT_REGISTRY", "MLPLAT_TRACKING", "MLPLAT_ONLINE_STORE")
# Settings every workspace shares with the hub, as the MLPLAT_* variables load_settings() reads.
SHARED_SETTINGS = ("registry", "tracking", "online_store", "offline_store", "artifacts", "online_prefix",
                   "triton_url", "triton_http_url", "triton_metrics_url", "triton_repository")


def teams(spawner: Any) -> list[str]:
    """The user's JupyterHub groups (their teams), by name; the platform admins' group is no team."""
    return sorted(group.name for group in spawner.user.groups if group.name != ADMIN_GROUP)


def _team(spawner: Any) -> str:
    names = teams(spawner)
    return names[0] if names else ""


def _profile_variable(name: str) -> Callable[[Any], str]:
    return lambda spawner: profile_from_options(spawner.user_options or {}).environment[name]


def platform_environment(settings: Settings, *, share_home: bool) -> dict[str, str]:
    """The platform settings as ``MLPLAT_*`` variables, for workspaces and hub services.

    ``share_home`` passes ``MLPLAT_HOME`` too, so processes on the hub's machine reuse its
    embedded services (one Redis, one SQLite registry); pods have their own disks and
    get only the service URLs.
    """
    env = {f"MLPLAT_{key.upper()}": str(getattr(settings, key)) for key in SHARED_SETTINGS}
    if share_home:
        env["MLPLAT_HOME"] = str(settings.home)
    return env


def workspace_environment(settings: Settings, *, share_home: bool, server_url: str = "") -> dict[str, Any]:
    """The ``Spawner.environment`` of every workspace: platform settings, user, team, profile, and in server
    mode (``server_url``) where ``mlplat server`` answers."""
    env: dict[str, Any] = dict(platform_environment(settings, share_home=share_home))
    if server_url:
        env["MLPLAT_SERVER_URL"] = server_url
    env["MLPLAT_USER"] = lambda spawner: spawner.user.name  # recorded as who changed the registry
    env["MLPLAT_TEAM"] = _team
    for name in DEFAULT_PROFILE.environment:  # every profile sets the same variables
        env[name] = _profile_variable(name)
    return env


def without_write_credentials(env: dict[str, Any]) -> dict[str, Any]:
    """A server-mode workspace's ``env`` when it must not write the stores itself (a pod, an OS account of its
    own): the server's own stores (:data:`SERVER_ONLY`) left out."""
    return {name: value for name, value in env.items() if name not in SERVER_ONLY}
