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
NATIVE_CATEGORICAL = ("xgboost", "lightgbm")  # families whose estimators code string features themselves


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
    # Each string feature's categories, as seen in the training rows (sorted): how boosters' native categorical
    # support codes them, and how monitoring counts them. None for runs made before strings were features.
    categories: dict[str, list[str]] | None = None
    template: str | None = None  # a composite estimator, unfitted (see mlplat.training.estimators.build)

    @property
    def native_categories(self) -> dict[str, list[str]] | None:
        """The categories XGBoost and LightGBM take their string features as (others take the strings)."""
        return self.categories if self.family in NATIVE_CATEGORICAL else None


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


def registered(settings: Settings, name: str, version: str) -> Any:
    """Version ``version`` of model ``name`` as MLflow's registry holds it (its run and the tags pinning it)."""
    with session(settings) as client:
        return client.get_model_version(name, str(version))


def load_model(settings: Settings, name: str, version: str, family: str, found_version: Any = None) -> Any:
    """A registered version as its native estimator (with predict_proba), not the pyfunc wrapper.

    Its files are checked against the digest pinned at registration, and its MLmodel against the flavours
    mlplat loads without pickle, before anything is deserialised (ArtifactIntegrityError otherwise).
    ``found_version`` is the version from :func:`registered`, where the caller has read it already.
    """
    import mlflow

    from mlplat.registry.integrity import verified_copy

    if found_version is None:
        found_version = registered(settings, name, version)
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


def text_columns(X: pd.DataFrame) -> list[str]:
    """The columns of ``X`` that hold strings (neither numbers nor booleans)."""
    return [c for c in X.columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]


def categories_of(X: pd.DataFrame) -> dict[str, list[str]]:
    """Each string column's distinct values (sorted; a missing value is no category)."""
    return {c: sorted({v for v in X[c].tolist() if isinstance(v, str) and v}) for c in text_columns(X)}


def model_inputs(frame: pd.DataFrame, columns: list[str],
                 categories: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Feature columns as estimators take them: numbers as float64 (float32 as stored), NaN when missing.

    Strings stay strings, with ``""`` for a missing one (what serving sends: string tensors have no null), unless
    ``categories`` are given: then each is a pandas categorical of those categories (XGBoost's and LightGBM's native
    support), a missing value or one never seen in training being NaN, which those estimators treat as missing.
    """
    X = frame[columns]
    texts = text_columns(X)
    X = X.astype({c: "float64" for c in columns if c not in texts and X[c].dtype.kind != "f"})
    if not texts:
        return X
    if categories is None:
        return X.assign(**{c: X[c].where(X[c].notna(), "").astype(object) for c in texts})
    known = {c: categories.get(c, []) for c in texts}
    return X.assign(**{c: pd.Categorical(X[c].where(X[c].isin(known[c]), None), categories=known[c]) for c in texts})
