"""What a training run logs to MLflow beside its metrics: the model, plots, drift reference, imputation values.

The registry reads them back (:mod:`mlplat.registry.artifacts`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplat.registry.artifacts import IMPUTE_ARTIFACT, REFERENCE_ARTIFACT, text_columns
from mlplat.registry.evaluate import figures
from mlplat.training.fingerprint import requirements

_FLAVOURS = {"sklearn": ("scikit-learn",), "xgboost": ("xgboost", "scikit-learn"),
             "lightgbm": ("lightgbm", "scikit-learn")}


def log_model(model: Any, family: str, kind: str, X_sample: pd.DataFrame, output: Any,
              categories: dict[str, list[str]] | None = None) -> str:
    """Log ``model`` with its MLflow flavour, a signature, an input example and pinned requirements; its URI.

    Its pyfunc returns what serving returns: a classifier's class probabilities (the classes are in the model's
    metadata, ``mlplat.classes``), a regressor's values; XGBoost's and LightGBM's take their string features as
    text (:mod:`mlplat.registry.mlplat_pyfunc`). The signature is inferred from a small sample (``X_sample`` and
    its ``output``): MLflow checks every value it is given, which costs seconds on a whole test set. Numbers are
    declared float64, which every estimator here accepts for float32 features.
    """
    import mlflow
    from mlflow.models import Model, infer_signature

    texts = text_columns(X_sample)
    X_sample = X_sample.astype({c: "float64" for c in X_sample.columns if c not in texts})  # float32 widens losslessly
    X_sample = X_sample.assign(**{c: X_sample[c].astype(object).where(X_sample[c].notna(), "") for c in texts})
    about = {"family": family, "kind": kind, "columns": list(X_sample.columns), "categories": categories or {},
             "classes": np.asarray(getattr(model, "classes_", [])).tolist()}
    common = {"signature": infer_signature(X_sample, output), "input_example": X_sample.head(3),
              "pip_requirements": [*requirements(*_FLAVOURS[family]), *requirements("numpy", "pandas", "scipy")],
              "metadata": {"mlplat": about},
              "mlflow_model": Model(run_id=mlflow.active_run().info.run_id, artifact_path="model")}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model"
        if family == "sklearn":
            import skops.io

            # skops refuses to load types it was not told to trust; trust exactly the types this model holds.
            trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
            mlflow.sklearn.save_model(model, path, serialization_format="skops", skops_trusted_types=trusted,
                                      pyfunc_predict_fn="predict_proba" if kind == "classifier" else "predict",
                                      **common)
        else:
            getattr(mlflow, family).save_model(model, path, **common)
            _own_pyfunc(path)
        mlflow.log_artifacts(str(path), "model")
    return f"runs:/{common['mlflow_model'].run_id}/model"


def _own_pyfunc(path: Path) -> None:
    """Make a booster's pyfunc :mod:`mlplat.registry.mlplat_pyfunc` (shipped in the model as its code)."""
    from mlflow.models import Model

    from mlplat.registry import mlplat_pyfunc

    (path / "code").mkdir()
    shutil.copyfile(mlplat_pyfunc.__file__, path / "code" / "mlplat_pyfunc.py")
    described = Model.load(path / "MLmodel")
    described.flavors["python_function"].update(loader_module="mlplat_pyfunc", code="code")
    described.save(path / "MLmodel")


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
    # A feature never seen has no distribution; string features are not compared (their categories are recorded).
    measured = [c for c in rows.columns if c not in text_columns(rows) and rows[c].notna().any()]
    features = reference(rows, measured)
    mlflow.log_dict(features.merged(reference(pd.DataFrame({"prediction": output}))).to_dict(), REFERENCE_ARTIFACT)


def log_impute(X_train: pd.DataFrame) -> None:
    """The training rows' median of each feature: what ``p.deploy(..., missing="impute")`` fills gaps with.

    A feature never present in training has no median (null): the model learnt it as missing, and so is a string
    feature (its missing value, ``""``, is what the model learnt missing values as).
    """
    import mlflow

    medians = X_train.drop(columns=text_columns(X_train)).median(skipna=True)
    mlflow.log_dict({"statistic": "median", "columns": list(X_train.columns),
                     "values": [None if pd.isna(medians.get(c)) else float(medians[c]) for c in X_train.columns]},
                    IMPUTE_ARTIFACT)
