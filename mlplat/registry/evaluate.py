"""Splitting a training set, scoring a model (metrics and plots), and the validation gate.

The default split is by time: the model trains on earlier rows and is tested on
later ones, as it will be used. Rows sharing the boundary timestamp all go to
the test side, so no test row is older than a training row.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import InvalidArgument, TrainingError
from mlplat.features.retrieval import entity_times

CLASSIFIER_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss")
REGRESSOR_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}


@dataclass(frozen=True)
class Split:
    """How to hold out test rows: ``by="time"`` (default) or ``"random"``, ``test_size`` a fraction."""

    by: str = "time"
    test_size: float = 0.2

    def __post_init__(self) -> None:
        if self.by not in ("time", "random"):
            raise InvalidArgument(f"split by={self.by!r}; use 'time' or 'random'.")
        if isinstance(self.test_size, bool) or not isinstance(self.test_size, numbers.Real) \
                or not 0 < self.test_size < 1:
            raise InvalidArgument(f"test_size={self.test_size!r} must be a fraction between 0 and 1, e.g. 0.2.")

    @classmethod
    def parse(cls, split: Split | Mapping[str, Any] | None) -> Split:
        """A Split from ``{"by": "random", "test_size": 0.3}`` (None: the default time split)."""
        if isinstance(split, Split):
            return split
        if split is not None and not isinstance(split, Mapping):
            raise InvalidArgument(f"split={split!r}: write {{'by': 'time' or 'random', 'test_size': 0.2}}.")
        unknown = sorted(set(split or {}) - {"by", "test_size"})
        if unknown:
            raise InvalidArgument(f"split has no option {unknown[0]!r}; it takes 'by' and 'test_size'.")
        return cls(**(split or {}))


@dataclass(frozen=True)
class Gate:
    """A validation gate: ``{"metric": "roc_auc", "min": 0.7}`` (or ``"max"`` for losses)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @classmethod
    def parse(cls, spec: dict[str, Any] | None, kind: str) -> Gate | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping) or set(spec) - {"metric", "min", "max"} or "metric" not in spec \
                or ("min" not in spec and "max" not in spec):
            raise InvalidArgument(f"validation={spec!r}: write {{'metric': 'roc_auc', 'min': 0.7}} (or 'max').")
        for bound in ("min", "max"):
            value = spec.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise InvalidArgument(f"validation {bound}={value!r} must be a number, e.g. 0.7.")
        known = metric_names(kind)
        if spec["metric"] not in known:
            raise InvalidArgument(f"validation metric {spec['metric']!r} is not computed for a {kind}; use one of {', '.join(known)}.")
        return cls(spec["metric"], spec.get("min"), spec.get("max"))

    def check(self, metrics: dict[str, float]) -> str | None:
        """None when the metrics pass, else why not."""
        value = metrics[self.metric]
        if self.min is not None and not value >= self.min:
            return f"{self.metric} {value:.4f} is below the required minimum {self.min}"
        if self.max is not None and not value <= self.max:
            return f"{self.metric} {value:.4f} is above the allowed maximum {self.max}"
        return None


def metric_names(kind: str) -> tuple[str, ...]:
    return CLASSIFIER_METRICS if kind == "classifier" else REGRESSOR_METRICS


def split_rows(frame: pd.DataFrame, split: Split, timestamp_field: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and test rows."""
    n = len(frame)
    if n == 0:  # check_target says why nothing can be trained
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    if split.by == "random":
        order = np.random.default_rng(seed).permutation(n)
        cut = n - max(1, int(round(n * split.test_size)))
        return np.sort(order[:cut]), np.sort(order[cut:])
    times = entity_times(frame, timestamp_field)  # int64 ns: tz-aware columns would sort as objects
    order = np.argsort(times, kind="stable")
    boundary = times[order[min(n - 1, n - max(1, int(round(n * split.test_size))))]]
    test = times >= boundary
    return np.flatnonzero(~test), np.flatnonzero(test)


def check_target(y_train: pd.Series, y_test: pd.Series, kind: str, target: str) -> None:
    """Refuse splits a model cannot learn from or be scored on."""
    if y_train.isna().any() or y_test.isna().any():
        raise TrainingError(f"Target {target!r} has missing values; drop those rows from entity_df first.")
    if len(y_train) == 0 or len(y_test) == 0:
        raise TrainingError("The split left no training or no test rows; pass more rows or another test_size.")
    if kind == "classifier":
        for side, values in (("training", y_train), ("test", y_test)):
            if values.nunique() < 2:
                raise TrainingError(
                    f"The {side} rows hold one class only ({values.iloc[0]!r}) of {target!r}; a classifier needs "
                    "both. Use more data, another test_size, or split={'by': 'random'}."
                )


def predict(model: Any, X: pd.DataFrame, kind: str) -> np.ndarray:
    """What the metrics and plots are computed from: class probabilities, or predicted values."""
    return model.predict_proba(X) if kind == "classifier" else model.predict(X)


def score(model: Any, X: pd.DataFrame, y: pd.Series, kind: str, predictions: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``(X, y)`` (from ``predictions`` when already computed)."""
    from sklearn import metrics as m

    output = predict(model, X, kind) if predictions is None else predictions
    if kind == "regressor":
        return {"rmse": float(np.sqrt(m.mean_squared_error(y, output))),
                "mae": float(m.mean_absolute_error(y, output)), "r2": float(m.r2_score(y, output))}
    predicted = model.classes_[output.argmax(axis=1)]
    binary = output.shape[1] == 2
    positive = output[:, 1] if binary else output
    return {
        "roc_auc": float(m.roc_auc_score(y, positive, multi_class="ovr", labels=model.classes_)),
        "pr_auc": float(m.average_precision_score(y, positive, pos_label=model.classes_[1]))
        if binary else float("nan"),
        "accuracy": float(m.accuracy_score(y, predicted)),
        "f1": float(m.f1_score(y, predicted, average="binary" if binary else "macro", pos_label=model.classes_[-1])),
        "log_loss": float(m.log_loss(y, output, labels=model.classes_)),
    }


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
