"""MLflow's tracking store and model registry, configured from the platform settings.

MLflow's fluent API keeps its tracking URI in process-wide state; ``session``
points it at this platform's store for the duration of a block and puts the
previous one back afterwards, so two platforms in one process do not mix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

from mlplat.config import Settings
from mlplat.errors import TrackingUnavailable
from mlplat.files import private_umask

# mlplat reports what it did itself: no artifact progress bars, no database set-up chatter.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.tracking.fluent")

_PREPARED: set[str] = set()  # tracking URIs whose store this process has seen ready


def prepare_store(settings: Settings) -> None:
    """Create an embedded (SQLite) store's tables and Default experiment once, under a file lock.

    MLflow creates them on first use; two processes doing so at once (a notebook's kernel and the
    Jupyter server, say) collide with "table _alembic_tmp_experiments already exists".
    """
    uri = settings.tracking
    if uri in _PREPARED or not uri.startswith("sqlite:///"):
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlplat.services import file_lock

    _quiet()
    with file_lock(settings.run_dir / "tracking.lock"), private_umask():  # its database and artifact root: 0600/0700
        try:
            # Creates every table, and the Default experiment with its artifacts under the platform's artifact
            # root (a client would put them under ./mlruns of whichever process came first).
            SqlAlchemyStore(uri, settings.artifacts)
        except Exception as exc:  # an unusable store surfaces as many exception types
            raise unavailable(settings, exc) from None
    _PREPARED.add(uri)


def client(settings: Settings) -> Any:
    """A ``MlflowClient`` on the platform's tracking store (checked reachable), without MLflow's process-wide state."""
    from mlflow.tracking import MlflowClient

    if settings.tracking.startswith(("http://", "https://")):  # fail in seconds, not after MLflow's retries
        try:
            urllib.request.urlopen(f"{settings.tracking.rstrip('/')}/health", timeout=3).close()
        except OSError as exc:
            raise unavailable(settings, exc) from None
    prepare_store(settings)
    _quiet()
    return MlflowClient(settings.tracking, settings.tracking)


def _quiet() -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[Any]:
    """Point MLflow's fluent API at the platform's tracking store and yield a ``MlflowClient``."""
    import mlflow

    tracker = client(settings)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    environment = {name: os.environ.get(name) for name in _URI_VARIABLES}  # MLflow's setters write these too
    mlflow.set_tracking_uri(settings.tracking)
    mlflow.set_registry_uri(settings.tracking)
    try:
        with private_umask():  # runs' artifacts and models that MLflow writes from this process: 0600/0700
            yield tracker
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for name, value in environment.items():  # as they were: a child process inherits no leftover URI
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def experiment_id(client: Any, settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created with its artifacts under the platform's artifact root."""
    try:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=f"{settings.artifacts.rstrip('/')}/{name}")
        except Exception:  # created meanwhile by another thread or process?
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    except Exception as exc:  # MLflow raises many kinds for an unreachable store
        raise unavailable(settings, exc) from None


def unavailable(settings: Settings, exc: Exception) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"Cannot use the MLflow tracking store {settings.tracking} ({type(exc).__name__}: {str(exc)[:200]}). "
        "Start it (`mlplat up` starts the embedded one) or fix the tracking setting."
    )
