"""MLflow, configured from the platform settings: runs, models and plots.

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

import numpy as np
import pandas as pd

from mlplat.config import Settings
from mlplat.errors import TrackingUnavailable
from mlplat.training.fingerprint import requirements

# mlplat reports what it did itself: no artifact progress bars, no database set-up chatter.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.tracking.fluent")

_FLAVOURS = {"sklearn": ("scikit-learn",), "xgboost": ("xgboost", "scikit-learn"),
             "lightgbm": ("lightgbm", "scikit-learn")}


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
    with file_lock(settings.run_dir / "tracking.lock"):
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


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[Any]:
    """Point MLflow's fluent API at the platform's tracking store and yield a ``MlflowClient``."""
    import mlflow

    tracker = client(settings)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(settings.tracking)
    mlflow.set_registry_uri(settings.tracking)
    try:
        yield tracker
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


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


def log_model(model: Any, family: str, X_sample: pd.DataFrame, output: Any) -> Any:
    """Log ``model`` with its MLflow flavour, a signature, an input example and pinned requirements.

    The signature is inferred from a small sample (``X_sample`` and its ``output``):
    MLflow checks every value it is given, which costs seconds on a whole test set.
    Inputs are declared float64, which every estimator here accepts for float32 features.
    """
    import mlflow
    from mlflow.models import infer_signature

    X_sample = X_sample.astype("float64")  # serving sends float64; float32 features widen losslessly
    signature = infer_signature(X_sample, output)
    pip = [*requirements(*_FLAVOURS[family]), *requirements("numpy", "pandas", "scipy")]
    common = {"name": "model", "signature": signature, "input_example": X_sample.head(3), "pip_requirements": pip}
    if family == "xgboost":
        return mlflow.xgboost.log_model(model, **common)
    if family == "lightgbm":
        return mlflow.lightgbm.log_model(model, **common)
    import skops.io

    # skops refuses to load types it was not told to trust; trust exactly the types this model holds.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return mlflow.sklearn.log_model(model, skops_trusted_types=trusted, **common)


def log_plots(model: Any, X_test: pd.DataFrame, y_test: pd.Series, kind: str, predictions: np.ndarray) -> None:
    """Log :func:`figures` to the active run under ``plots/``."""
    import matplotlib.pyplot as plt
    import mlflow

    for name, figure in figures(model, X_test, y_test, kind, predictions).items():
        mlflow.log_figure(figure, f"plots/{name}.png")
        plt.close(figure)


def figures(model: Any, X_test: pd.DataFrame, y_test: pd.Series, kind: str, predictions: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall curves (classifiers) or residuals (regressors), and feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {}
    if kind == "classifier" and len(getattr(model, "classes_", [])) == 2:
        from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

        figure, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
        scores = predictions[:, 1]
        RocCurveDisplay.from_predictions(y_test, scores, ax=roc, pos_label=model.classes_[1])
        PrecisionRecallDisplay.from_predictions(y_test, scores, ax=pr, pos_label=model.classes_[1])
        found["roc_pr"] = figure
    elif kind == "regressor":
        figure, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(predictions, np.asarray(y_test) - predictions, s=4, alpha=0.5)
        ax.axhline(0, color="grey", lw=1)
        ax.set(xlabel="predicted", ylabel="residual", title="Residuals on the test rows")
        found["residuals"] = figure
    importance = getattr(model, "feature_importances_", None)
    if importance is None and hasattr(model, "coef_"):
        importance = np.abs(np.asarray(model.coef_)).reshape(-1, len(X_test.columns)).mean(axis=0)
    if importance is not None:
        order = np.argsort(importance)[-20:]
        figure, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1))
        ax.barh(np.asarray(X_test.columns)[order], np.asarray(importance)[order])
        ax.set(title="Feature importance")
        figure.tight_layout()
        found["feature_importance"] = figure
    return found


REFERENCE_ARTIFACT = "mlplat/reference.json"
_REFERENCE_ROWS = 50_000  # a sample: quantiles of 50k rows are what drift checks need, at a fraction of the time


def log_reference(X_train: pd.DataFrame, predictions: np.ndarray, seed: int) -> None:
    """Drift reference of the run: the training features (sampled) and the test rows' predictions."""
    import mlflow

    from mlplat.monitoring.drift import reference

    rows = X_train if len(X_train) <= _REFERENCE_ROWS else X_train.sample(_REFERENCE_ROWS, random_state=seed)
    output = predictions[:, -1] if predictions.ndim == 2 else predictions  # classifiers: the last class's score
    measured = [c for c in rows.columns if rows[c].notna().any()]  # a feature never seen has no distribution
    features = reference(rows, measured)
    mlflow.log_dict(features.merged(reference(pd.DataFrame({"prediction": output}))).to_dict(), REFERENCE_ARTIFACT)



IMPUTE_ARTIFACT = "mlplat/impute.json"


def log_impute(X_train: pd.DataFrame) -> None:
    """The training rows' median of each feature: what ``p.deploy(..., missing="impute")`` fills gaps with.

    A feature never present in training has no median (null): the model learnt it as missing.
    """
    import mlflow

    medians = X_train.median(skipna=True)
    mlflow.log_dict({"statistic": "median", "columns": list(X_train.columns),
                     "values": [None if pd.isna(v) else float(v) for v in medians]}, IMPUTE_ARTIFACT)


def load_impute(settings: Settings, run_id: str) -> list[float] | None:
    """The values :func:`log_impute` recorded for a run (NaN where it has none), or None for runs made before."""
    import mlflow

    with session(settings):
        try:
            found = mlflow.artifacts.load_dict(f"runs:/{run_id}/{IMPUTE_ARTIFACT}")
        except Exception:  # MLflow raises several kinds for a missing artifact
            return None
    return [float("nan") if v is None else v for v in found["values"]]
