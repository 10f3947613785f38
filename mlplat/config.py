"""Settings: where each service lives, as one URL per service.

Layers, each overriding the one before::

    embedded defaults < $MLPLAT_HOME/config.yaml < ./mlplat.yaml < MLPLAT_* env < arguments

``MLPLAT_HOME`` (default ``~/.mlplat``) holds everything the embedded defaults
write: the SQLite registry, the Parquet offline store, the Redis data directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from mlplat.errors import ConfigError, InvalidArgument

EMBEDDED = "embedded"

# Accepted URL schemes per setting; the value ``embedded`` means "start it here".
_SCHEMES = {
    "online_store": (EMBEDDED, "redis://", "rediss://", "unix://"),
    "registry": ("sqlite:///", "postgresql://", "postgresql+"),
    "offline_store": ("file://", "s3://", "/"),
    "tracking": ("sqlite:///", "postgresql://", "postgresql+", "http://", "https://"),
    "artifacts": ("file://", "s3://", "/"),
    "triton_url": (EMBEDDED, "grpc://"),
}
# Optional settings (empty: unset) and the URL schemes they accept.
_OPTIONAL_SCHEMES = {"online_reader": ("redis://", "rediss://", "unix://"), "triton_http_url": ("http://", "https://"),
                     "triton_metrics_url": ("http://", "https://"), "triton_repository": ("/",)}
_EXTERNAL_TRITON = ("triton_http_url", "triton_metrics_url", "triton_repository")  # what describes a Triton we were given


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved platform settings. Build with :func:`load_settings`."""

    home: Path
    online_store: str  # "embedded" or a redis:// URL
    registry: str  # SQLAlchemy URL of the metadata database
    offline_store: str  # file://, s3:// or an absolute path
    tracking: str = ""  # MLflow tracking URI: sqlite:///, postgresql://, http(s):// of an MLflow server
    artifacts: str = ""  # where MLflow stores run artifacts and models: file:// or s3://
    redis_server: str | None = None  # path to a redis-server binary; found on PATH if unset
    user: str = ""  # who is recorded on registry changes
    team: str = ""  # the team that owns what this user creates (a JupyterHub group in a workspace)
    online_prefix: str = "mlp"  # namespace of every online key in Redis (letters, digits, _ . -)
    online_reader: str = ""  # an external Redis's URL as a user that only reads: what the server hands workspaces
    online_user: str = "admin"  # the role this process logs in as on the embedded Redis (see features.redis_users)
    kubernetes: dict | None = None  # a `kubernetes:` section makes p.compute() a KubeCluster (see training.cluster)
    triton_env: str = ""  # the venv holding nvidia-pytriton's tritonserver (default: .venv-triton beside ours)
    triton_url: str = EMBEDDED  # "embedded" (the platform runs Triton) or grpc://host:port of a Triton it was given
    triton_http_url: str = ""  # that Triton's HTTP endpoint (http://host:port), shown with deployments
    triton_metrics_url: str = ""  # its Prometheus endpoint (http://host:port/metrics), scraped beside mlplat's
    triton_repository: str = ""  # a model repository that Triton serves too; empty: models are sent over gRPC
    triton_control_secret: str = ""  # value of the mlplat-triton-control header that model control on that Triton needs
    prediction_sample_rate: float = 1.0  # share of requests whose rows go to the prediction log
    alert_webhook: str = ""  # URL that new alerts are POSTed to (Slack-compatible JSON)
    max_clock_skew: timedelta = timedelta(minutes=5)  # events dated later than now + this are refused as "future"
    job_timeout: timedelta = timedelta(hours=6)  # a notebook job's cell running longer is stopped (0: no limit)
    server_url: str = ""  # http(s):// of `mlplat server`: server mode (a workspace of a shared install); empty: embedded
    job_server_url: str = ""  # a shared install's scheduler: jobs' kernels call this server as their owners (mlplat.jobs.owners)
    job_account: str = ""  # with job_server_url: the OS account a job's kernel runs as, "{username}" its owner's name

    @property
    def run_dir(self) -> Path:
        """Directory for pid/port files of embedded services."""
        return self.home / "run"


_FIELDS = [f.name for f in dataclasses.fields(Settings)]


def load_settings(**overrides: Any) -> Settings:
    """Merge every configuration layer into :class:`Settings`.

    >>> load_settings(home="/tmp/mlp").registry
    'sqlite:////tmp/mlp/registry.db'
    """
    _check_keys(overrides, "arguments to mlplat.connect()/load_settings()")
    env = {f: os.environ[f"MLPLAT_{f.upper()}"] for f in _FIELDS if f"MLPLAT_{f.upper()}" in os.environ}
    home = Path(overrides.get("home") or env.get("home") or "~/.mlplat").expanduser().resolve()

    merged: dict[str, Any] = {}
    for path in (home / "config.yaml", Path.cwd() / "mlplat.yaml"):
        merged.update(_read_yaml(path))
    merged.update(env)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    merged["home"] = home
    if isinstance(merged.get("kubernetes"), str):  # MLPLAT_KUBERNETES holds YAML or JSON
        import yaml

        merged["kubernetes"] = yaml.safe_load(merged["kubernetes"])
    if merged.get("kubernetes") is not None and not isinstance(merged["kubernetes"], dict):
        raise ConfigError("The kubernetes setting must be a mapping such as {image: ..., namespace: ...}.")

    merged.setdefault("online_store", EMBEDDED)
    merged.setdefault("registry", f"sqlite:///{home / 'registry.db'}")
    merged.setdefault("offline_store", (home / "offline").as_uri())
    merged.setdefault("tracking", f"sqlite:///{home / 'mlflow.db'}")
    merged.setdefault("artifacts", (home / "mlartifacts").as_uri())
    merged.setdefault("triton_env", str(Path(sys.prefix).parent / ".venv-triton"))
    merged.setdefault("triton_url", EMBEDDED)
    merged.setdefault("user", _current_user())
    if "prediction_sample_rate" in merged:
        merged["prediction_sample_rate"] = _rate(merged["prediction_sample_rate"])
    for name in ("max_clock_skew", "job_timeout"):
        if name in merged:
            merged[name] = _duration(merged[name], name)
    for key, schemes in _SCHEMES.items():
        value = str(merged[key])
        if not value.startswith(schemes):
            raise ConfigError(
                f"{key}={value!r} is not a supported URL; use one starting with "
                f"{', '.join(schemes)} (set it in mlplat.yaml or MLPLAT_{key.upper()})."
            )
        merged[key] = value
    _check_optional(merged)
    _check_triton(merged)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(merged.get("online_prefix", "mlp"))):
        raise ConfigError(f"online_prefix={merged['online_prefix']!r} may hold only letters, digits, '_', '.' and "
                          "'-': it names the keys each of the online store's users may touch.")
    server_url = str(merged.get("server_url") or "")
    if server_url and not server_url.startswith(("http://", "https://")):
        raise ConfigError(f"server_url={server_url!r} must be the platform server's http(s):// URL "
                          "(set MLPLAT_SERVER_URL, or leave it empty for embedded mode).")
    _check_jobs(merged)
    return Settings(**merged)


def _check_jobs(merged: dict[str, Any]) -> None:
    """Jobs run as their owners against a server's URL, and as their accounts only then."""
    url, account = str(merged.get("job_server_url") or ""), str(merged.get("job_account") or "")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"job_server_url={url!r} must be the platform server's http(s):// URL, which scheduled "
                          "jobs call as their owners (or leave it empty: jobs run as the scheduler).")
    if account and (not url or account.count("{username}") != 1):
        raise ConfigError(f"job_account={account!r} names the OS account a job's kernel runs as, with '{{username}}' "
                          "once for its owner's name (mlplat-{username}), and needs job_server_url set.")


def _check_optional(merged: dict[str, Any]) -> None:
    """The optional URL settings, where given, start with a scheme they accept."""
    for key, schemes in _OPTIONAL_SCHEMES.items():
        value = str(merged.get(key) or "")
        if value and not value.startswith(schemes):
            raise ConfigError(f"{key}={value!r} must start with {', '.join(schemes)} "
                              f"(set it in mlplat.yaml or MLPLAT_{key.upper()}).")


def _check_triton(merged: dict[str, Any]) -> None:
    """The settings describing an external Triton are given only with one (``triton_url``)."""
    for key in _EXTERNAL_TRITON:
        if merged.get(key) and merged["triton_url"] == EMBEDDED:
            raise ConfigError(f"{key} describes an external Triton, but triton_url is {EMBEDDED!r}: set triton_url "
                              "to its gRPC URL (grpc://host:8001), or remove the setting.")
    if merged.get("triton_control_secret") and merged["triton_url"] == EMBEDDED:
        raise ConfigError("triton_control_secret is for an external Triton, but triton_url is "
                          f"{EMBEDDED!r}: the embedded Triton's secret is made by the platform "
                          "($MLPLAT_HOME/run/triton.secret). Set triton_url, or remove the setting.")
    if "triton_control_secret" in merged:
        merged["triton_control_secret"] = str(merged["triton_control_secret"] or "")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}. Fix the file or remove it.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings such as 'registry: sqlite:///...'.")
    _check_keys(data, str(path))
    return data


def _check_keys(data: Mapping[str, Any], where: str) -> None:
    for key in data:
        if key not in _FIELDS:
            hint = difflib.get_close_matches(key, _FIELDS, n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(
                f"Unknown setting {key!r} in {where}; {suggestion}known settings: {', '.join(_FIELDS)}."
            )


def _rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0 <= rate <= 1:
        raise ConfigError(f"prediction_sample_rate={value!r} must be a number between 0 and 1 (1 logs every request).")
    return rate


def _duration(value: Any, name: str) -> timedelta:
    """A duration ("5min", "30s", timedelta) or a number of seconds, as YAML or an environment variable gives it."""
    from mlplat.durations import parse_duration

    try:
        value = float(value) if isinstance(value, str) else value
    except ValueError:
        pass  # a duration with a unit
    return parse_duration(value, name, allow_zero=True, seconds=True, error=ConfigError)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_assignments(pairs: Iterable[str], what: str = "value") -> dict[str, Any]:
    """``["n=5", "name=churn", "tags=[a, b]"]`` -> ``{"n": 5, "name": "churn", "tags": ["a", "b"]}`` (YAML values)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{pair!r}: write each {what} as name=value, e.g. n_estimators=100.")
        try:
            out[key.strip()] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out

