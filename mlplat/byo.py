"""``p.models.log``: register a model trained anywhere with the same lineage, gate and pins as ``p.train``.

The model (a scikit-learn-compatible estimator, an XGBoost/LightGBM model, a ``torch.nn.Module``) is scored on the
holdout of the rows it was trained on (the split ``p.train`` would make, which promotion's shared holdout uses),
exported to ONNX *here*, in the caller's process, and the export checked against it on sample rows; both are
logged with the run (see :mod:`mlplat.registry.logged_onnx`). A model ONNX cannot express is registered all the
same and served through its MLflow pyfunc (the slower fallback: :mod:`mlplat.serving.pyfunc`).
Everything is checked before anything is written.
"""

from __future__ import annotations

import copy
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import InvalidArgument, MissingColumnError, OnnxExportError, TrainingError
from mlplat.features.refs import resolve as resolve_refs
from mlplat.features.retrieval import entity_times
from mlplat.registry.artifacts import TrainSpec, model_inputs
from mlplat.registry.evaluate import Gate, Split, predict, score
from mlplat.registry.logged_onnx import ONNX, PYFUNC, RUNTIME_TAG, SAMPLE_ROWS, LoggedOnnx
from mlplat.serving.onnx_export import check_parity, export
from mlplat.training import device, estimators, torch_models
from mlplat.training.run import (
    Training,
    TrainResult,
    check_inputs,
    gate_and_register,
    log_outputs,
    record_inputs,
    split_inputs,
    tracked_run,
    training_fingerprint,
    training_frame,
)

LOGGED_TAG = "mlplat.logged"  # on the run: how the model came in ("p.models.log"); such runs are not reproducible
CALLER = device.Device("caller", {}, "trained outside mlplat; logged with p.models.log")


class TrainingSetMismatch(TrainingError):
    """A training set given to ``p.models.log`` does not hold what the feature store has for its rows."""


def log(training: Training, model: Any, name: str, *, features: list[str], target: str,
        entity_df: pd.DataFrame | None = None, training_set: pd.DataFrame | None = None,
        metrics: dict[str, float] | None = None, validation: dict[str, Any] | None = None,
        split: dict[str, Any] | Split | None = None, kind: str | None = None,
        timestamp_field: str = "event_timestamp", seed: int = 0, register: bool = True,
        tolerance: float = 1e-4) -> TrainResult:
    """Track, gate and register ``model`` (trained by its user on ``features`` of ``entity_df``'s rows, or on the
    rows of ``training_set``, labelled by ``target``). See ``ModelRegistry.log``."""
    import mlflow

    family, path = _family(model)
    given = _metrics(metrics)
    if kind not in (None, "classifier", "regressor"):
        raise InvalidArgument(f"kind={kind!r}: give 'classifier' or 'regressor' (or leave it out).")
    split = Split.parse(split)
    rows, from_frame = _rows(entity_df, training_set)
    requests = _requests(training, features, rows, target, name, from_frame)
    columns = [c for r in requests for c in r.columns]
    pinned = [f"{r.view.name}@{r.view.version}:{f}" for r in requests for f in r.features]
    spec = _spec(model, path, family, kind, pinned, target, timestamp_field, split, seed, name)
    if from_frame:
        rows = _in_time_order(rows, timestamp_field)
        entity = rows.drop(columns=columns)
        entity, frame = training_frame(training, spec, entity)
        _same_features(rows, frame, columns)
        fingerprint = training_fingerprint(rows, entity, columns)
    else:
        entity, frame = training_frame(training, spec, rows)
        fingerprint = training_fingerprint(frame, entity, columns)
    native = (torch_models.from_net(model, kind) if torch_models.is_net(model) else
              torch_models.from_module(model, kind, model_inputs(frame, columns), frame[target])
              if family == "torch" else model)
    spec = _with_kind(spec, native, family, kind)
    gate = Gate.parse(validation, spec.kind)
    spec, X, y, train_rows, test_rows = split_inputs(frame, spec, columns)
    if spec.categories:
        raise InvalidArgument(f"p.models.log takes numeric features; {sorted(spec.categories)} are strings. Train "
                              "a model on string features with p.train (a Pipeline that encodes them, or XGBoost "
                              "or LightGBM), or log one on numbers.")
    X_test, y_test = X.iloc[test_rows], y.iloc[test_rows]
    predictions = _predictions(native, X_test, spec.kind)
    measured = {**score(native, X_test, y_test, spec.kind, predictions), **given}
    exported, refused = _export(native, family, spec.kind, X_test, tolerance)
    runtime = ONNX if exported.data is not None else PYFUNC
    tags = {LOGGED_TAG: "p.models.log", RUNTIME_TAG: runtime, **({"mlplat.onnx_refused": refused[:5000]}
                                                                  if refused else {})}
    with tracked_run(training, spec) as run:
        record_inputs(training, spec, entity, fingerprint, tags, CALLER)
        mlflow.log_metrics({k: v for k, v in measured.items() if np.isfinite(v)})
        model_uri = log_outputs(native, spec, X.iloc[train_rows], X_test, y_test, predictions, exported)
        version, rejected = gate_and_register(training, spec, gate, measured, run.info.run_id, model_uri,
                                              fingerprint, register, "logged", runtime=runtime,
                                              recorded=family == "torch" or runtime == PYFUNC)
    return TrainResult(name, run.info.run_id, measured, version, rejected, spec.features, fingerprint,
                       model_uri)


def _family(model: Any) -> tuple[str, str]:
    """``(family, class path)`` of a model; InvalidArgument for anything that is not one."""
    cls = type(model)
    path = f"{cls.__module__}.{cls.__qualname__}"
    if torch_models.is_module(model) or torch_models.is_net(model):
        return "torch", path
    if isinstance(model, type) or not callable(getattr(model, "predict", None)):
        raise InvalidArgument(f"{reprlib.repr(model)} is not a trained model: p.models.log takes a fitted "
                              "estimator (scikit-learn, XGBoost, LightGBM: with predict) or a torch.nn.Module.")
    family = estimators._family(path)
    return ("sklearn" if family == "torch" else family), path


def _metrics(metrics: Any) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping) or not all(
            isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool) for k, v in metrics.items()):
        raise InvalidArgument(f"metrics={reprlib.repr(metrics)}: give a dict of metric names and numbers, "
                              "e.g. {'roc_auc': 0.81}.")
    return {k: float(v) for k, v in metrics.items()}


def _rows(entity_df: Any, training_set: Any) -> tuple[pd.DataFrame, bool]:
    if (entity_df is None) == (training_set is None):
        raise InvalidArgument("Give the rows the model was trained on as entity_df= (entity keys, times and the "
                              "target: the platform rebuilds the features) or training_set= (those rows with "
                              "their feature columns), one of the two.")
    return (entity_df, False) if training_set is None else (training_set, True)


def _requests(training: Training, features: list[str], rows: pd.DataFrame, target: str, name: str,
              from_frame: bool) -> list:
    if not from_frame:
        return check_inputs(training.features, features, rows, target, name)
    if not isinstance(rows, pd.DataFrame):
        raise InvalidArgument(f"training_set must be a pandas DataFrame, not {type(rows).__name__}.")
    requests = resolve_refs(features, training.features.get_view)
    missing = [c for r in requests for c in r.columns if c not in rows.columns]
    if missing:
        raise MissingColumnError(f"training_set has no column(s) {missing} of the features {features}; pass "
                                 "p.features.get_training_set(rows, features) as it came, or entity_df= instead.")
    check_inputs(training.features, features, rows.drop(columns=[c for r in requests for c in r.columns]), target,
                 name)
    return requests


def _spec(model: Any, path: str, family: str, kind: str | None, pinned: list[str], target: str, timestamp_field: str,
          split: Split, seed: int, name: str) -> TrainSpec:
    params = {} if family == "torch" else {k: v for k, v in _params(model).items()
                                           if isinstance(v, (str, int, float, bool, type(None)))}
    return TrainSpec(path, params, kind or "undecided", family, pinned, target, timestamp_field, asdict(split), seed,
                     None, name)  # the kind is the model's own when not given: see _with_kind


def _params(model: Any) -> dict[str, Any]:
    try:
        return dict(model.get_params(deep=False))
    except Exception:  # not a scikit-learn style estimator: no parameters to record
        return {}


def _with_kind(spec: TrainSpec, native: Any, family: str, kind: str | None) -> TrainSpec:
    """The spec with the model's kind: as given, a module's (from its outputs), or an estimator's own."""
    if family == "torch":
        found = native.kind
    elif kind is not None:
        found = kind
    else:
        from sklearn.base import is_classifier, is_regressor

        found = "classifier" if is_classifier(native) or (not is_regressor(native) and
                                                          hasattr(native, "predict_proba")) else "regressor"
    if found == "classifier" and getattr(native, "classes_", None) is None:
        raise InvalidArgument(f"{spec.estimator} is a classifier without classes_: is it fitted?")
    return TrainSpec(**{**asdict(spec), "kind": found})


def _in_time_order(rows: pd.DataFrame, timestamp_field: str) -> pd.DataFrame:
    times = entity_times(rows, timestamp_field)
    return rows.iloc[np.argsort(times, kind="stable")] if np.any(times[1:] < times[:-1]) else rows


def _same_features(given: pd.DataFrame, frame: pd.DataFrame, columns: list[str]) -> None:
    """Refuse a training set whose feature values are not the feature store's for its rows, as of their times."""
    mine, theirs = model_inputs(frame, columns).to_numpy(), given[columns].to_numpy(dtype=np.float64)
    same = np.isclose(mine, theirs, rtol=1e-6, atol=0, equal_nan=True)
    if not same.all():
        row, column = np.argwhere(~same)[0]
        raise TrainingSetMismatch(
            f"training_set does not hold the feature store's values: {np.count_nonzero(~same.all(axis=1))} of "
            f"{len(given)} rows differ (first: row {row}, {columns[column]} = {theirs[row, column]!r} where the "
            f"store says {mine[row, column]!r} as of that row's time). Pass the rows as entity_df= and let the "
            "platform build them, or the unchanged output of p.features.get_training_set.")


def _predictions(model: Any, X: pd.DataFrame, kind: str) -> np.ndarray:
    try:
        output = np.asarray(predict(model, X, kind), dtype=np.float64)
    except Exception as exc:  # a model raises whatever its predict raises
        raise InvalidArgument(f"{type(model).__name__} cannot predict on the {X.shape[1]} feature columns "
                              f"{list(X.columns)} ({type(exc).__name__}: {exc}); log it with the features it was "
                              "trained on, in that order.") from None
    if len(output) != len(X):
        raise InvalidArgument(f"{type(model).__name__} returned {len(output)} predictions for {len(X)} rows.")
    if kind == "classifier" and (output.ndim != 2 or output.shape[1] != len(model.classes_)):
        raise InvalidArgument(f"{type(model).__name__}.predict_proba returned shape {output.shape}, not one "
                              f"column per class of {list(model.classes_)}.")
    return output


def _export(model: Any, family: str, kind: str, X_test: pd.DataFrame,
            tolerance: float) -> tuple[LoggedOnnx, str | None]:
    """The model's ONNX export checked against it here with its description, or the description alone (no
    ``data``) and why ONNX cannot express the model (then it is served by its pyfunc)."""
    if family == "torch":
        return torch_models.export_or_describe(model, X_test, tolerance)
    sample = X_test.head(SAMPLE_ROWS)
    data, refused = None, None
    try:
        # the XGBoost converter wants the booster's feature names cleared: the user's model keeps its own
        onnx = export(copy.deepcopy(model) if family == "xgboost" else model, family, kind, list(X_test.columns))
        check_parity(onnx, model, kind, sample, tolerance)
        data = onnx.data
    except OnnxExportError as exc:
        refused = str(exc)
    native = np.asarray(predict(model, sample, kind), dtype=np.float64).reshape(len(sample), -1)
    classes = model.classes_.tolist() if kind == "classifier" else None
    output = "probabilities" if kind == "classifier" else "variable"
    # Without an export, the description still records the sample rows and outputs the pyfunc must reproduce.
    return LoggedOnnx(data, output, X_test.shape[1], native.shape[1], kind, classes,
                      np.asarray(sample, dtype=np.float32), native), refused
