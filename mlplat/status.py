"""What is running and where: ``p.status()``, ``%mlplat status``."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from importlib import metadata
from typing import Any

PACKAGES = ("mlplat", "pandas", "pyarrow", "redis", "dask", "mlflow", "scikit-learn", "xgboost", "lightgbm",
            "papermill", "tritonclient", "jupyterlab", "jupyterhub")


@dataclass(frozen=True)
class Status:
    """Embedded services (where they listen, ``UNHEALTHY (why)`` first when one runs but does not answer or make
    progress, None when stopped), the configured endpoints, and package versions."""

    services: dict[str, str | None]
    endpoints: dict[str, str]
    versions: dict[str, str]

    def __str__(self) -> str:
        lines = [f"{name:10} {url or 'stopped'}" for name, url in self.services.items()]
        lines += [f"{name:10} {value}" for name, value in self.endpoints.items()]
        lines.append(" ".join(f"{name}={version}" for name, version in self.versions.items()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def table(title: str, rows: dict[str, Any]) -> str:
            cells = "".join(f"<tr><td>{escape(k)}</td><td><code>{escape(str(v))}</code></td></tr>"
                            for k, v in rows.items())
            return f"<table><tr><th colspan=2>{title}</th></tr>{cells}</table>"

        services = {name: url or "stopped" for name, url in self.services.items()}
        return ("<div style='display:flex;gap:2em;align-items:flex-start'>"
                + table("services", services) + table("endpoints", self.endpoints)
                + table("versions", self.versions) + "</div>")


def status(settings: Any) -> Status:
    """The platform's status as these settings see it."""
    from mlplat import services

    found = {health.name: health for health in services.health(settings)}
    redis = found["redis"].state if "redis" in found else None
    online = f"embedded at {redis.url}" if settings.online_store == "embedded" and redis else settings.online_store
    endpoints = {"home": str(settings.home), "online store": online, "registry": settings.registry, "offline store": str(settings.offline_store),
                 "tracking": settings.tracking, "user": settings.user}
    if settings.triton_url != "embedded":  # a Triton the platform does not start or stop
        endpoints["triton"] = f"external {external_triton(settings)}"
    return Status({name: _where(health) for name, health in found.items()}, endpoints, _versions())


def external_triton(settings: Any) -> str:
    """Where the external Triton listens, as ``mlplat status`` shows it."""
    return "  ".join(filter(None, [settings.triton_url, settings.triton_http_url, settings.triton_metrics_url]))


def _where(health: Any) -> str | None:
    """Where a service listens, after what is wrong with it if anything; None when it is stopped."""
    if health.state is None:
        return None
    return health.state.where if health.healthy else f"{health.summary}  {health.state.where}"


def _versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
