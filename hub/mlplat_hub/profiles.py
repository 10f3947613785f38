"""Workspace profiles: how big a user's server is, on one machine and on Kubernetes.

One definition serves both spawners. :func:`apply_profile` (the spawners'
``apply_user_options`` hook) validates the requested profile and sets the CPU and
memory limits every spawner knows; KubeSpawner's ``profile_list`` adds what only a
pod has: the GPU limit, node selector and tolerations. The profile reaches the
server as ``MLPLAT_PROFILE``, ``MLPLAT_DEVICE`` and ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from mlplat.errors import InvalidArgument

GPU_RESOURCE = "nvidia.com/gpu"
# A managed workspace: JupyterLab neither asks to fetch news nor nags about updates (the platform picks versions).
_MANAGED_LAB = ("--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
# The NVIDIA GPU operator labels GPU nodes so; GPU nodes are usually tainted with the resource name.
_GPU_NODES = {"nvidia.com/gpu.present": "true"}
_GPU_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


@dataclasses.dataclass(frozen=True)
class Profile:
    """A workspace size: guaranteed and maximum CPUs and memory, and GPUs."""

    slug: str
    display_name: str
    description: str
    cpu_guarantee: float
    cpu_limit: float
    mem_guarantee: str
    mem_limit: str
    gpus: int = 0
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()

    @property
    def environment(self) -> dict[str, str]:
        """What the server learns about its profile. CPU workspaces see no GPU, even on a GPU machine."""
        gpus = ",".join(str(i) for i in range(self.gpus))
        return {"MLPLAT_PROFILE": self.slug, "MLPLAT_DEVICE": "gpu:0" if self.gpus else "cpu",
                "CUDA_VISIBLE_DEVICES": gpus}

    @property
    def kernels(self) -> tuple[str, ...]:
        """The kernels a workspace of this profile offers: the GPU kernel only where there is a GPU."""
        return ("python3", "mlplat", "mlplat-gpu") if self.gpus else ("python3", "mlplat")

    @property
    def server_args(self) -> list[str]:
        """Options of a workspace's Jupyter server: its kernels, and a managed JupyterLab."""
        return [*_MANAGED_LAB, *(f"--KernelSpecManager.allowed_kernelspecs={k}" for k in self.kernels)]

    def kubespawner_profile(self, default: bool = False) -> dict[str, Any]:
        """This profile as a KubeSpawner ``profile_list`` entry (the pod-only settings)."""
        override: dict[str, Any] = {"args": self.server_args}
        if self.gpus:
            override["extra_resource_limits"] = {GPU_RESOURCE: str(self.gpus)}
        if self.node_selector:
            override["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            override["tolerations"] = [dict(t) for t in self.tolerations]
        return {"slug": self.slug, "display_name": self.display_name, "description": self.description,
                "default": default, "kubespawner_override": override}


PROFILES: tuple[Profile, ...] = (
    Profile("cpu-small", "CPU, small", "2 CPUs, 4 GB: exploring data, small models", 0.5, 2, "1G", "4G"),
    Profile("cpu-large", "CPU, large", "8 CPUs, 32 GB: bigger training sets, tuning", 4, 8, "16G", "32G"),
    Profile("gpu-x1", "GPU x1", "1 NVIDIA GPU, 8 CPUs, 48 GB: deep learning, GPU training", 4, 8, "24G", "48G",
            gpus=1, node_selector=_GPU_NODES, tolerations=_GPU_TOLERATIONS),
)
DEFAULT_PROFILE = PROFILES[0]


def get_profile(slug: Any) -> Profile:
    """The profile named ``slug``; InvalidArgument, listing the profiles, if there is none."""
    for profile in PROFILES:
        if profile.slug == slug:
            return profile
    names = [p.slug for p in PROFILES]
    hint = difflib.get_close_matches(str(slug), names, n=1)
    suggestion = f"did you mean {hint[0]!r}? " if hint else ""
    raise InvalidArgument(f"{slug!r} is not a workspace profile; {suggestion}choose one of {', '.join(names)}.")


def profile_from_options(user_options: Any) -> Profile:
    """The profile a spawn request asks for (``{"profile": "gpu-x1"}``; none named: the default).

    Anything else in the request is refused: it comes from users, through forms or the REST API.
    """
    if not isinstance(user_options, Mapping):
        raise InvalidArgument(f"Workspace options must be a JSON object such as {{\"profile\": "
                              f"\"{DEFAULT_PROFILE.slug}\"}}, got {user_options!r}.")
    unknown = sorted(set(user_options) - {"profile"})
    if unknown:
        raise InvalidArgument(f"Unknown workspace option(s) {', '.join(map(repr, unknown))}; the only option is "
                              f"'profile', one of {', '.join(p.slug for p in PROFILES)}.")
    return get_profile(user_options.get("profile") or DEFAULT_PROFILE.slug)


def apply_profile(spawner: Any, user_options: Any) -> None:
    """``Spawner.apply_user_options`` hook: refuse a bad request with HTTP 400, else apply its limits."""
    from tornado import web

    try:
        profile = profile_from_options(user_options)
    except InvalidArgument as exc:
        error = web.HTTPError(400, str(exc))
        error.jupyterhub_message = str(exc)  # shown as is by the API and the spawn page
        raise error from None
    spawner.cpu_guarantee, spawner.cpu_limit = profile.cpu_guarantee, profile.cpu_limit
    spawner.mem_guarantee, spawner.mem_limit = profile.mem_guarantee, profile.mem_limit


def kubespawner_profile_list() -> list[dict[str, Any]]:
    """Every profile as KubeSpawner's ``profile_list`` (its form shows them; the default comes first)."""
    return [p.kubespawner_profile(default=p is DEFAULT_PROFILE) for p in PROFILES]
