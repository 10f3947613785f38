"""What KubeSpawner needs beyond its own settings: team folders from one shared volume, literal settings.

Every workspace pod gets the team-projects PersistentVolumeClaim as volume ``teams``
and mounts, per team of its user, the claim's ``<team>/`` folder at
``/home/jovyan/teams/<team>``: the same layout as on one machine.

In server mode a pod holds no write credential: no database URL, no MLflow store, and the online store
as the read-only Redis user of the Secret ``mlplat-online-reader`` (see ``serving/kubernetes/server.yaml``).
"""

from __future__ import annotations

from typing import Any

from mlplat.config import Settings
from mlplat.errors import ConfigError
from mlplat_hub.environment import teams

TEAMS_VOLUME = "teams"
TEAMS_MOUNT = "/home/jovyan/teams"  # the home of Jupyter's docker-stacks images
ONLINE_READER_SECRET = "mlplat-online-reader"  # key ``url``: redis://reader:...@host:6379/0, an ACL user that only reads


def team_volume(claim: str) -> dict[str, Any]:
    """The pod volume holding every team's folder."""
    return {"name": TEAMS_VOLUME, "persistentVolumeClaim": {"claimName": claim}}


def mount_team_folders(spawner: Any, pod: Any) -> Any:
    """``KubeSpawner.modify_pod_hook``: mount each of the user's team folders into the notebook container."""
    from kubernetes_asyncio.client.models import V1VolumeMount

    container = pod.spec.containers[0]
    container.volume_mounts = [*(container.volume_mounts or []), *(
        V1VolumeMount(name=TEAMS_VOLUME, mount_path=f"{TEAMS_MOUNT}/{team}", sub_path=team)
        for team in teams(spawner))]
    return pod


def literal(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` with braces in its strings escaped: KubeSpawner expands ``{username}``-style fields in them."""
    return {k: v.replace("{", "{{").replace("}", "}}") if isinstance(v, str) else v for k, v in env.items()}


def reading_online_store(env: dict[str, Any]) -> dict[str, Any]:
    """A server-mode pod's ``env`` (:func:`~mlplat_hub.environment.without_write_credentials`) with the online
    store read from the reader's Secret (KubeSpawner turns a mapping into the variable's ``valueFrom``)."""
    return {**env, "MLPLAT_ONLINE_STORE": {"valueFrom": {"secretKeyRef": {"name": ONLINE_READER_SECRET, "key": "url"}}}}


def check_shared(settings: Settings) -> None:
    """Refuse settings that name this machine: pods share no disk and no loopback with the hub."""
    local = [f"MLPLAT_{key.upper()}={value}" for key, value in
             (("online_store", settings.online_store), ("registry", settings.registry), ("tracking", settings.tracking))
             if value == "embedded" or value.startswith("sqlite:")]
    if local:
        raise ConfigError(
            f"Workspaces on Kubernetes would each get a platform of their own with {', '.join(local)}. Point them "
            "at shared services: MLPLAT_ONLINE_STORE=redis://..., MLPLAT_REGISTRY=postgresql://..., "
            "MLPLAT_TRACKING=postgresql://... or an MLflow server's http://... URL.")
