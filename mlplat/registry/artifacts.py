"""What a training run records beside its model, and how a registered version is read back.

A run (see :mod:`mlplat.training.run`) writes these artifacts; the registry (promotion on a
shared holdout, batch scoring, drift references) and serving (export, imputation) read them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlplat.config import Settings
from mlplat.errors import ArtifactIntegrityError, TrainingError
from mlplat.registry import logged_onnx
from mlplat.registry.tracking import session

SPEC_ARTIFACT = "mlplat/train_spec.json"
ENTITIES_ARTIFACT = "mlplat/entity_df.parquet"
REFERENCE_ARTIFACT = "mlplat/reference.json"
IMPUTE_ARTIFACT = "mlplat/impute.json"


@dataclass(frozen=True)
class TrainSpec:
    """Every input of a run except the data itself, as recorded next to it."""

    estimator: str
    params: dict[str, Any]
    kind: str
    family: str
    features: list[str]  # pinned: view@version:feature
    target: str
    timestamp_field: str
    split: dict[str, Any]
    seed: int
    validation: dict[str, Any] | None
    name: str


def load_spec(settings: Settings, run_id: str) -> tuple[TrainSpec, pd.DataFrame]:
    """The recorded inputs of a run: its TrainSpec and its entity rows."""
    import mlflow

    with session(settings):
        try:
            spec = TrainSpec(**mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPEC_ARTIFACT}"))
            with tempfile.TemporaryDirectory() as folder:
                path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{ENTITIES_ARTIFACT}", dst_path=folder)
                entity_df = pd.read_parquet(path)
        except Exception as exc:
            raise TrainingError(f"Run {run_id} has no mlplat training record ({exc}); was it made by p.train?") from None
    return spec, entity_df


def load_model(settings: Settings, name: str, version: str, family: str) -> Any:
    """A registered version as its native estimator (with predict_proba), not the pyfunc wrapper.

    Its files are checked against the digest pinned at registration, and its MLmodel against the flavours
    mlplat loads without pickle, before anything is deserialised (ArtifactIntegrityError otherwise).
    """
    import mlflow

    from mlplat.registry.integrity import verified_copy

    with session(settings) as client:
        found_version = client.get_model_version(name, str(version))
        tags = dict(found_version.tags or {})
    if family == "torch" or tags.get(logged_onnx.RUNTIME_TAG) == logged_onnx.PYFUNC:
        return _logged_export(settings, name, str(version), found_version.run_id, tags)
    with verified_copy(settings, name, str(version), tags, family) as (folder, found):
        flavour = {"xgboost": mlflow.xgboost, "lightgbm": mlflow.lightgbm, "sklearn": mlflow.sklearn}[found]
        return flavour.load_model(str(folder))


def _logged_export(settings: Settings, name: str, version: str, run_id: str, tags: dict[str, str]) -> Any:
    """A PyTorch or pyfunc-fallback version as its logged ONNX export: its native model runs its author's code."""
    what = f"Model {name!r} version {version}"
    found = logged_onnx.load(settings, run_id, tags, what)
    if found is None:
        raise ArtifactIntegrityError(f"{what} has no pinned record of how it is served; log it again with "
                                     "p.models.log.")
    if found.data is not None:
        return logged_onnx.OnnxPredictor(found)
    # A pyfunc runs its author's code when loaded: in a worker process of its own, as Triton serves it.
    from mlplat.registry.integrity import verified_copy
    from mlplat.registry.pyfunc_worker import WorkerPredictor

    with verified_copy(settings, name, version, tags, recorded=True) as (folder, _):
        return WorkerPredictor(folder, found.kind, found.classes)


def load_impute(settings: Settings, run_id: str) -> list[float] | None:
    """The training medians a run recorded (NaN where it has none), or None for runs made before they were."""
    import mlflow

    with session(settings):
        try:
            found = mlflow.artifacts.load_dict(f"runs:/{run_id}/{IMPUTE_ARTIFACT}")
        except Exception:  # MLflow raises several kinds for a missing artifact
            return None
    return [float("nan") if v is None else v for v in found["values"]]


def model_inputs(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Feature columns as estimators take them: floats (as stored), others as float64; NaN when missing."""
    X = frame[columns]
    strings = [c for c in columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
    if strings:
        raise TrainingError(f"Feature(s) {strings} are not numeric; encode them in a feature view (e.g. one-hot) first.")
    return X.astype({c: "float64" for c in columns if X[c].dtype.kind != "f"})
