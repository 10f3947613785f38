"""What a training run logs to MLflow beside its metrics: the model, plots, drift reference, imputation values.

The registry reads them back (:mod:`mlplat.registry.artifacts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplat.registry.artifacts import IMPUTE_ARTIFACT, REFERENCE_ARTIFACT
from mlplat.registry.evaluate import figures
from mlplat.training.fingerprint import requirements

_FLAVOURS = {"sklearn": ("scikit-learn",), "xgboost": ("xgboost", "scikit-learn"),
             "lightgbm": ("lightgbm", "scikit-learn")}


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


def log_impute(X_train: pd.DataFrame) -> None:
    """The training rows' median of each feature: what ``p.deploy(..., missing="impute")`` fills gaps with.

    A feature never present in training has no median (null): the model learnt it as missing.
    """
    import mlflow

    medians = X_train.median(skipna=True)
    mlflow.log_dict({"statistic": "median", "columns": list(X_train.columns),
                     "values": [None if pd.isna(v) else float(v) for v in medians]}, IMPUTE_ARTIFACT)
