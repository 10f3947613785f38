"""A schedule as a Kubernetes CronJob: the same notebook job, run by the cluster's own scheduler.

The manifest is built from the ``kubernetes`` client's models, so it is typed
as the API server expects. The pod runs ``mlplat jobs run`` in the configured
image with the platform's endpoints in its environment; notebooks are read from
a PersistentVolumeClaim (``kubernetes.volume``) that holds the project folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlplat.config import Settings
from mlplat.errors import ConfigError, JobError, MissingDependency
from mlplat.training.cluster import KubernetesSettings

MOUNT = "/workspace"  # where the project volume appears in the pod
_NAME_LIMIT = 52  # a CronJob's name leaves 11 characters for the Jobs it creates


def cronjob(settings: Settings, schedule: Any, project: str | Path, retries: int = 0) -> Any:
    """A ``V1CronJob`` running ``schedule`` (a :class:`mlplat.jobs.schedules.Schedule`) in the cluster.

    ``project`` is the local folder that the ``kubernetes.volume`` claim holds; the notebook must be in it.
    """
    try:
        from kubernetes import client as k8s
    except ImportError as exc:
        raise MissingDependency(f"CronJob manifests need the kubernetes client ({exc}); "
                                "install it with `pip install 'mlplat[kubernetes]'`.") from None
    if settings.kubernetes is None:
        raise ConfigError("A CronJob needs the kubernetes settings section (image, namespace, volume, ...).")
    k = KubernetesSettings.from_mapping(settings.kubernetes)
    if not k.volume:
        raise ConfigError("kubernetes.volume is required for jobs: the PersistentVolumeClaim holding the project "
                          "folder with the notebooks, mounted at /workspace in the job's pod.")
    notebook = _inside(Path(schedule.notebook), Path(project).resolve())
    command = ["mlplat", "jobs", "run", f"{MOUNT}/{notebook}", "--kernel", schedule.kernel,
               "--parameters", json.dumps(schedule.parameters, sort_keys=True)]
    if retries:
        command += ["--retries", str(retries)]
    resources = {"cpu": k.cpu, "memory": k.memory}
    limits = {**resources, **({"nvidia.com/gpu": str(k.gpu)} if k.gpu else {})}
    container = k8s.V1Container(
        name="notebook", image=k.image, command=command, working_dir=f"{MOUNT}/{notebook.parent}",
        env=[k8s.V1EnvVar(name=n, value=v) for n, v in sorted({**_endpoints(settings), **k.env}.items())],
        resources=k8s.V1ResourceRequirements(requests=resources, limits=limits),
        volume_mounts=[k8s.V1VolumeMount(name="project", mount_path=MOUNT)])
    pod = k8s.V1PodSpec(
        containers=[container], restart_policy="Never", node_selector=k.node_selector or None,
        tolerations=[_toleration(k8s, t) for t in k.tolerations] or None,
        volumes=[k8s.V1Volume(name="project", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=k.volume))])
    labels = {"app.kubernetes.io/managed-by": "mlplat", "mlplat/schedule": str(schedule.id)}
    return k8s.V1CronJob(
        api_version="batch/v1", kind="CronJob",
        metadata=k8s.V1ObjectMeta(name=_name(notebook.stem, schedule.id), namespace=k.namespace, labels=labels,
                                  annotations={"mlplat/notebook": str(notebook), "mlplat/owner": schedule.created_by,
                                               "mlplat/team": schedule.team}),
        spec=k8s.V1CronJobSpec(
            schedule=schedule.cron, time_zone="Etc/UTC", concurrency_policy="Forbid", suspend=not schedule.enabled,
            starting_deadline_seconds=3600, successful_jobs_history_limit=3, failed_jobs_history_limit=5,
            job_template=k8s.V1JobTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=k8s.V1JobSpec(
                backoff_limit=0, template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels),
                                                                spec=pod)))))


def manifest(cron_job: Any) -> dict[str, Any]:
    """The CronJob as the plain mapping ``kubectl apply`` takes (camelCase keys, no nulls)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(cron_job)


def _endpoints(settings: Settings) -> dict[str, str]:
    """The platform's endpoints for the pod; embedded (loopback, file) services cannot be reached from it."""
    endpoints = {"MLPLAT_REGISTRY": settings.registry, "MLPLAT_TRACKING": settings.tracking,
                 "MLPLAT_ONLINE_STORE": settings.online_store, "MLPLAT_OFFLINE_STORE": str(settings.offline_store),
                 "MLPLAT_ARTIFACTS": str(settings.artifacts), "MLPLAT_ONLINE_PREFIX": settings.online_prefix}
    local = [f"{k.removeprefix('MLPLAT_').lower()}={v}" for k, v in endpoints.items()
             if k != "MLPLAT_ONLINE_PREFIX" and (v == "embedded" or v.startswith(("sqlite:", "/", "file:"))
                                                 or re.search(r"//(127\.0\.0\.1|localhost)[:/]", v))]
    if local:
        raise ConfigError(f"A job in the cluster cannot reach {', '.join(local)} on this machine; set server URLs "
                          "(postgresql://, redis://, http:// MLflow, s3:// stores) in mlplat.yaml first.")
    return endpoints


def _toleration(k8s: Any, entry: dict[str, Any]) -> Any:
    return k8s.V1Toleration(**{"toleration_seconds" if k == "tolerationSeconds" else k: v for k, v in entry.items()})


def _inside(notebook: Path, project: Path) -> Path:
    try:
        return notebook.relative_to(project)
    except ValueError:
        raise JobError(f"{notebook} is not inside the project folder {project}; the job's pod sees only that "
                       "folder (the kubernetes.volume claim). Move the notebook there or pass its project.") from None


def _name(stem: str, schedule_id: int) -> str:
    suffix = f"-{schedule_id}"
    slug = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "notebook"
    return f"mlplat-{slug}"[: _NAME_LIMIT - len(suffix)].rstrip("-") + suffix
