"""Dask compute for ``p.compute()``: a LocalCluster here, a KubeCluster on Kubernetes.

Without a ``kubernetes:`` section in the settings, :func:`compute` starts a
``dask.distributed.LocalCluster`` sized to the machine. With one, it creates a
``DaskCluster`` resource for the Dask operator (``dask_kubernetes``) from
:func:`cluster_spec`, and turns on adaptive scaling when ``adapt_max`` is set.

Each call starts a fresh cluster; close it with ``.close()`` or ``with``. On
Kubernetes the cluster is named by ``name``: while one of that name runs in the
namespace, another call connects to it instead (dask-kubernetes' default), and
only the handle that created it deletes it on close. Use distinct names for
separate clusters.

Dask and dask-kubernetes are imported only when a cluster is built or specified.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.config import Settings
from mlplat.errors import ConfigError, InvalidArgument, MissingDependency, ServiceError

# Positive Kubernetes quantities: CPUs "2", "500m", "1.5"; memory with a unit, "4Gi", "512M".
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?([kMGTPE]|[KMGTPE]i)$")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
# The scheduler only coordinates: it runs on any node, with no GPU.
_SCHEDULER_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
_LOCAL_OPTIONS = ("workers", "threads")
_MAX_LOCAL_WORKERS = 4


def _check_keys(data: Iterable[str], known: Iterable[str], where: str, error: type[Exception] = ConfigError) -> None:
    known = list(known)
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise error(f"Unknown key {key!r} in {where}; {suggestion}known keys: {', '.join(known)}.")


def _int(value: Any, name: str, minimum: int, error: type[Exception] = ConfigError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"kubernetes.{name} must be a non-empty string, got {value!r}.")
    return value


def _quantity(value: Any, name: str, pattern: re.Pattern[str], examples: str) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not pattern.match(text):
        raise ConfigError(f"kubernetes.{name}={value!r} is not a Kubernetes quantity; write it like {examples}.")
    return text


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"kubernetes.{name} must map names to strings (quote numbers and booleans in YAML), got {value!r}.")
    return dict(value)


def _tolerations(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise ConfigError(f"kubernetes.tolerations must be a list of mappings such as "
                          f"{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}, got {value!r}.")
    for toleration in value:
        _check_keys(toleration, _TOLERATION_KEYS, "a kubernetes.tolerations entry")
    return [dict(t) for t in value]


@dataclasses.dataclass(frozen=True)
class KubernetesSettings:
    """The ``kubernetes:`` settings section: where and how big the Dask workers are."""

    image: str
    name: str = "mlplat"
    namespace: str = "default"
    workers: int = 2
    cpu: str = "1"
    memory: str = "4Gi"
    gpu: int = 0  # nvidia.com/gpu per worker
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    adapt_min: int | None = None
    adapt_max: int | None = None  # set it to let the cluster scale between adapt_min (default 0) and it
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    volume: str | None = None  # a PersistentVolumeClaim with the project folder (notebook jobs)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> KubernetesSettings:
        """Validate a ``kubernetes`` settings mapping; raise ConfigError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ConfigError("The kubernetes setting must be a mapping such as {image: ..., namespace: ...}.")
        _check_keys(data, [f.name for f in dataclasses.fields(cls)], "the kubernetes settings")
        if data.get("image") is None:
            raise ConfigError("kubernetes.image is required: the container image of the Dask scheduler and "
                              "workers, e.g. 'ghcr.io/dask/dask:latest' (with your training packages installed).")
        values = dict(data)
        for key in ("image", "name", "namespace", "volume"):
            if key in values:
                values[key] = _text(values[key], key)
        for key in ("workers", "gpu"):
            if key in values:
                values[key] = _int(values[key], f"kubernetes.{key}", 0)
        for key, pattern, examples in (("cpu", _CPU, "'2' or '500m'"), ("memory", _MEMORY, "'4Gi' or '512Mi'")):
            if key in values:
                values[key] = _quantity(values[key], key, pattern, examples)
        for key in ("node_selector", "env"):
            if key in values:
                values[key] = _str_map(values[key], key)
        if "tolerations" in values:
            values["tolerations"] = _tolerations(values["tolerations"])
        low, high = values.get("adapt_min"), values.get("adapt_max")
        if low is not None:
            _int(low, "kubernetes.adapt_min", 0)
            if high is None:
                raise ConfigError("kubernetes.adapt_min needs kubernetes.adapt_max: the most workers to scale up to.")
        if high is not None and _int(high, "kubernetes.adapt_max", 1) < (low or 0):
            raise ConfigError(f"kubernetes.adapt_max={high} is below kubernetes.adapt_min={low}; "
                              "set adapt_max to at least adapt_min.")
        return cls(**values)


def _operator():
    try:
        from dask_kubernetes import operator
    except ImportError as exc:
        raise MissingDependency(
            f"Dask on Kubernetes needs dask-kubernetes ({exc}); install it with `pip install 'mlplat[kubernetes]'`."
        ) from None
    return operator


def cluster_spec(k: KubernetesSettings) -> dict[str, Any]:
    """The ``DaskCluster`` resource for these settings, as the Dask operator takes it.

    Built by ``dask_kubernetes.operator.make_cluster_spec``; then the worker
    containers get ``k.cpu``/``k.memory`` (and ``nvidia.com/gpu`` when ``k.gpu``)
    and the worker pods the node selector and tolerations. The scheduler stays
    small, on any node.
    """
    operator = _operator()
    from dask_kubernetes.exceptions import ValidationError
    from dask_kubernetes.operator.validation import validate_cluster_name

    try:
        validate_cluster_name(k.name)
    except ValidationError as exc:
        raise ConfigError(f"kubernetes.name={k.name!r}: {exc.message}") from None
    # Workers advertise their GPUs so tasks can ask for them: client.submit(f, resources={"GPU": 1}).
    command = f"dask-worker --resources GPU={k.gpu}" if k.gpu else "dask-worker"
    spec = operator.make_cluster_spec(name=k.name, image=k.image, n_workers=k.workers, env=k.env,
                                      worker_command=command)
    limits = {"cpu": k.cpu, "memory": k.memory}
    if k.gpu:
        limits["nvidia.com/gpu"] = str(k.gpu)  # the DaskCluster CRD types every quantity as a string
    worker_pod = spec["spec"]["worker"]["spec"]
    worker_pod["containers"][0]["resources"] = {"requests": {"cpu": k.cpu, "memory": k.memory}, "limits": limits}
    if k.node_selector:
        worker_pod["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        worker_pod["tolerations"] = [dict(t) for t in k.tolerations]
    spec["spec"]["scheduler"]["spec"]["containers"][0]["resources"] = {
        part: dict(values) for part, values in _SCHEDULER_RESOURCES.items()
    }
    return spec


class Compute:
    """A Dask cluster and its client: ``.client``, ``.dashboard_link``, ``.close()``.

    ``kind`` is ``"local"`` or ``"kubernetes"``. Build one with :func:`compute`.
    """

    def __init__(self, cluster: Any, kind: str):
        from dask.distributed import Client

        self.cluster = cluster
        self.kind = kind
        try:
            self.client = Client(cluster)
        except BaseException:
            cluster.close()
            raise

    @classmethod
    def local(cls, workers: int | None = None, threads: int | None = None) -> Compute:
        """A LocalCluster on 127.0.0.1: one worker per core (at most 4), the memory split between them."""
        try:
            from dask.system import CPU_COUNT
            from distributed import LocalCluster
            from distributed.system import MEMORY_LIMIT
        except ImportError as exc:
            raise MissingDependency(f"Local compute needs dask.distributed ({exc}); "
                                    "install it with `pip install 'mlplat[dask]'`.") from None
        n = min(CPU_COUNT, _MAX_LOCAL_WORKERS) if workers is None else _int(workers, "workers", 1, InvalidArgument)
        per_worker = max(1, CPU_COUNT // n) if threads is None else _int(threads, "threads", 1, InvalidArgument)
        cluster = LocalCluster(n_workers=n, threads_per_worker=per_worker, memory_limit=MEMORY_LIMIT // n,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0")
        return cls(cluster, "local")

    @classmethod
    def kubernetes(cls, k: KubernetesSettings) -> Compute:
        """A KubeCluster from :func:`cluster_spec`, adaptive between adapt_min and adapt_max when set."""
        operator = _operator()
        spec = cluster_spec(k)
        import httpx
        import kr8s
        from dask_kubernetes.exceptions import SchedulerStartupError

        what = f"the Dask cluster {k.name!r} in namespace {k.namespace!r}"
        try:
            kr8s.api()  # fails fast, before KubeCluster registers a cluster to reap at exit
        except (ValueError, OSError, httpx.HTTPError, kr8s.ServerError) as exc:
            raise ServiceError(
                f"Cannot reach the Kubernetes API to start {what}: {exc}. Check KUBECONFIG and the current "
                "context (`kubectl cluster-info`), or remove the kubernetes section to compute locally."
            ) from None
        try:
            cluster = operator.KubeCluster(custom_cluster_spec=spec, namespace=k.namespace, quiet=True)
            try:
                if k.adapt_max is not None:
                    cluster.adapt(minimum=k.adapt_min or 0, maximum=k.adapt_max)
            except BaseException:
                cluster.close()
                raise
        except (RuntimeError, TimeoutError, SchedulerStartupError, httpx.HTTPError, kr8s.ServerError) as exc:
            raise ServiceError(
                f"Could not start {what}: {exc}. Check that the Dask operator runs "
                "(`kubectl get pods -A -l app.kubernetes.io/name=dask-kubernetes-operator`), that you may create "
                f"DaskCluster resources in {k.namespace!r}, and the scheduler pod's events and logs."
            ) from exc
        return cls(cluster, "kubernetes")

    @property
    def dashboard_link(self) -> str:
        """URL of the Dask dashboard."""
        return self.cluster.dashboard_link

    def close(self) -> None:
        """Close the client, then shut the cluster down (on Kubernetes: delete it, if this handle created it)."""
        self.client.close()
        self.cluster.close()

    def __enter__(self) -> Compute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mlplat.Compute {self.kind} status={self.client.status} dashboard={self.dashboard_link}>"

    def _repr_html_(self) -> str:
        from dask.utils import format_bytes

        link = html.escape(self.dashboard_link)
        rows = [("kind", html.escape(self.kind)), ("status", html.escape(self.client.status))]
        if self.client.status == "running":
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            rows += [("workers", str(len(workers))), ("threads", str(sum(w["nthreads"] for w in workers))),
                     ("memory", format_bytes(sum(w["memory_limit"] or 0 for w in workers)))]
        rows.append(("dashboard", f'<a href="{link}" target="_blank">{link}</a>'))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in rows)
        return f"<div><strong>mlplat compute</strong><table>{body}</table></div>"


def compute(settings: Settings, kind: str | None = None, **overrides: Any) -> Compute:
    """Start the cluster these settings ask for and connect a client: ``p.compute()``.

    ``kind`` is "local" or "kubernetes"; by default Kubernetes when the settings
    have a ``kubernetes`` section, else local. Overrides: for a local cluster
    ``workers`` and ``threads`` (per worker); on Kubernetes any key of the
    ``kubernetes`` section, e.g. ``compute(s, gpu=1)``. Every call starts a
    fresh cluster (see the module docstring for Kubernetes).
    """
    kind = kind or ("local" if settings.kubernetes is None else "kubernetes")
    if kind not in ("local", "kubernetes"):
        raise InvalidArgument(f"Compute kind {kind!r} is not one of 'local', 'kubernetes'.")
    if kind == "kubernetes" and settings.kubernetes is None:
        raise ConfigError("Kubernetes compute needs a kubernetes section in mlplat.yaml (image, namespace, "
                          "workers, ...); see KubernetesSettings. Use 'local' to compute on this machine.")
    if kind == "local":
        _check_keys(overrides, _LOCAL_OPTIONS, "p.compute() options for a local cluster", InvalidArgument)
        return Compute.local(**overrides)
    return Compute.kubernetes(KubernetesSettings.from_mapping({**settings.kubernetes, **overrides}))
