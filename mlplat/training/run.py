"""One training run: training set -> split -> fit -> score -> track -> gate -> register.

Everything needed to redo the run is recorded with it (``mlplat/train_spec.json``
and the entity rows), so :func:`reproduce` can rebuild the same training set
and refit the same estimator with the same seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplat.audit import Audit
from mlplat.config import Settings
from mlplat.errors import EntityDataFrameError, GateFailed, MissingColumnError, TrainingError
from mlplat.features.on_demand import source_views
from mlplat.features.refs import resolve as resolve_refs
from mlplat.features.retrieval import entity_times, refuse_clashes
from mlplat.progress import ProgressBar, progress_bar
from mlplat.registry import logged_onnx, tracking
from mlplat.registry.artifacts import (
    SPEC_ARTIFACT,
    TrainSpec,
    categories_of,
    load_spec,
    model_inputs,
    text_columns,
)
from mlplat.registry.evaluate import Gate, Split, check_target, predict, score, split_rows
from mlplat.registry.logged_onnx import ONNX, PYFUNC, RUNTIME_TAG, LoggedOnnx
from mlplat.registry.models import ModelRegistry
from mlplat.registry.names import check_model_name
from mlplat.registry.scoring import FeatureSource
from mlplat.training import device, estimators, outputs, torch_models
from mlplat.training.fingerprint import code_fingerprint, environment, frame_fingerprint


@dataclass(frozen=True)
class Training:
    """What training runs use: the settings (MLflow store, user), the features they train on, the audit
    trail, and the model registry that versions which pass their gate go to."""

    settings: Settings
    features: FeatureSource
    audit: Audit
    models: ModelRegistry


@dataclass
class TrainResult:
    """What a training run produced; ``version`` is None when the gate refused the model."""

    name: str
    run_id: str
    metrics: dict[str, float]
    version: str | None
    rejected: str | None
    features: list[str]
    training_set_fingerprint: str
    model_uri: str
    seconds: dict[str, float] = field(default_factory=dict)

    def check(self) -> TrainResult:
        """Raise GateFailed when the gate refused the model (for jobs that must fail); else return self."""
        if self.rejected:
            raise GateFailed(f"Model {self.name!r} was not registered: {self.rejected}. See run {self.run_id}.")
        return self

    def _repr_html_(self) -> str:
        verdict = (f"<b style='color:#1a7f37'>registered as version {self.version}</b>" if self.version
                   else f"<b style='color:#cf222e'>not registered</b>: {escape(self.rejected or 'registration off')}")
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in self.metrics.items())
        return (f"<div><h4>{escape(self.name)} — run {self.run_id[:8]}</h4><p>{verdict}</p>"
                f"<table><tr><th>metric (test rows)</th><th>value</th></tr>{rows}</table>"
                f"<p>features: {escape(', '.join(self.features))}<br>training set {self.training_set_fingerprint[:12]}"
                "</p></div>")


def train(training: Training, estimator: Any, *, features: list[str], entity_df: pd.DataFrame, target: str, name: str,
          params: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
          split: dict[str, Any] | Split | None = None, timestamp_field: str = "event_timestamp", seed: int = 0,
          client: Any = None, register: bool = True, progress: bool | ProgressBar | None = None) -> TrainResult:
    """Train, evaluate, track and (if the gate passes) register a model version. See ``Platform.train``."""
    spec_ = estimators.resolve(estimator, params, seed)
    gate = Gate.parse(validation, spec_.kind)
    split = Split.parse(split)
    requests = check_inputs(training.features, features, entity_df, target, name)
    pinned = [f"{r.view.name}@{r.view.version}:{f}" for r in requests for f in r.features]
    spec = TrainSpec(spec_.path, spec_.params, spec_.kind, spec_.family, pinned, target, timestamp_field,
                     asdict(split), seed, asdict(gate) if gate else None, name, template=spec_.template)
    return _run(training, spec, entity_df, [c for r in requests for c in r.columns], gate, client, register,
                progress=progress)


def check_inputs(source: FeatureSource, features: list[str], entity_df: pd.DataFrame, target: str, name: str) -> list:
    """The view requests of ``features`` (from ``source``), once the rows, target and model name are known to be
    usable."""
    check_model_name(name)
    if not isinstance(entity_df, pd.DataFrame):
        raise EntityDataFrameError(f"entity_df must be a pandas DataFrame of labelled rows, not {type(entity_df).__name__}.")
    if not isinstance(target, str) or target not in entity_df.columns:
        raise MissingColumnError(f"entity_df has no target column {target!r}; it has {list(entity_df.columns)}.")
    requests = resolve_refs(features, source.get_view)
    refuse_clashes(entity_df.columns, [c for r in requests for c in r.columns])
    return requests


def _run(training: Training, spec: TrainSpec, entity_df: pd.DataFrame, columns: list[str], gate: Gate | None,
         client: Any, register: bool, parent_run_id: str | None = None, extra_tags: dict | None = None,
         progress: bool | ProgressBar | None = None) -> TrainResult:
    with progress_bar(4, f"train {spec.name}", progress) as bar:
        return _stages(training, spec, entity_df, columns, gate, client, register, parent_run_id, extra_tags, bar)


def _stages(training: Training, spec: TrainSpec, entity_df: pd.DataFrame, columns: list[str], gate: Gate | None,
            client: Any, register: bool, parent_run_id: str | None, extra_tags: dict | None, bar: Any) -> TrainResult:
    import mlflow

    seconds: dict[str, float] = {}
    bar.set_postfix_str("training set")
    started = time.perf_counter()
    entity_df, frame = training_frame(training, spec, entity_df, client)
    seconds["training_set"] = time.perf_counter() - started
    spec, X, y, train_rows, test_rows = split_inputs(frame, spec, columns)
    fingerprint = training_fingerprint(frame, entity_df, columns)
    with tracked_run(training, spec, parent_run_id) as run:
        used = device.for_fit(spec.family, spec.params, client)
        record_inputs(training, spec, entity_df, fingerprint, extra_tags, used)
        bar.update()
        bar.set_postfix_str("fit")
        started = time.perf_counter()
        model = fit(spec, X.iloc[train_rows], y.iloc[train_rows], client, used.params)
        seconds["fit"] = time.perf_counter() - started
        bar.update()
        bar.set_postfix_str("evaluate and log")
        started = time.perf_counter()
        X_test, y_test = X.iloc[test_rows], y.iloc[test_rows]
        predictions = predict(model, X_test, spec.kind)
        metrics = score(model, X_test, y_test, spec.kind, predictions)
        bar.set_postfix(metrics)
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        exported, runtime = None, None
        if spec.family == "torch":  # exported here, where the module lives (served by its pyfunc if it cannot be)
            exported, refused = torch_models.export_or_describe(model, X_test)
            runtime = ONNX if refused is None else PYFUNC
            mlflow.set_tags({RUNTIME_TAG: runtime, **({"mlplat.onnx_refused": refused[:5000]} if refused else {})})
        model_uri = log_outputs(model, spec, X.iloc[train_rows], X_test, y_test, predictions, exported)
        bar.update()
        bar.set_postfix_str("gate and register")
        version, rejected = gate_and_register(training, spec, gate, metrics, run.info.run_id, model_uri,
                                              fingerprint, register, recorded=spec.family == "torch",
                                              runtime=runtime)
        seconds["tracking"] = time.perf_counter() - started
        bar.update()
    return TrainResult(spec.name, run.info.run_id, metrics, version, rejected, spec.features, fingerprint,
                       model_uri, seconds)


def training_frame(training: Training, spec: TrainSpec, entity_df: pd.DataFrame,
                   client: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The entity rows in time order, and their point-in-time training set."""
    # In time order, a time split is two contiguous slices: no copies of the (large) feature matrix.
    times = entity_times(entity_df, spec.timestamp_field)
    if np.any(times[1:] < times[:-1]):
        entity_df = entity_df.iloc[np.argsort(times, kind="stable")]
    frame = training.features.get_training_set(entity_df, spec.features, timestamp_field=spec.timestamp_field,
                                               client=client)
    return entity_df, frame


def split_inputs(frame: pd.DataFrame, spec: TrainSpec,
                 columns: list[str]) -> tuple[TrainSpec, pd.DataFrame, pd.Series, Any, Any]:
    """``(spec, X, y, training rows, test rows)`` of a training set, the split checked to be usable, the spec
    with its string features' categories (see :func:`with_categories`)."""
    X, y = model_inputs(frame, columns), frame[spec.target]
    train_rows, test_rows = (_positions(rows) for rows in
                             split_rows(frame, Split(**spec.split), spec.timestamp_field, spec.seed))
    spec = with_categories(spec, X.iloc[train_rows])
    if spec.native_categories:
        X = model_inputs(frame, columns, spec.native_categories)
    check_target(y.iloc[train_rows], y.iloc[test_rows], spec.kind, spec.target)
    return spec, X, y, train_rows, test_rows


def training_fingerprint(frame: pd.DataFrame, entity_df: pd.DataFrame, columns: list[str]) -> str:
    """The lineage fingerprint of a training set: its entity rows' columns and its feature columns."""
    return frame_fingerprint(frame[[*entity_df.columns, *columns]])


@contextlib.contextmanager
def tracked_run(training: Training, spec: TrainSpec, parent_run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run in the model's experiment, ended FINISHED, or FAILED on any exception."""
    import mlflow

    with tracking.session(training.settings) as mlflow_client:
        experiment = tracking.experiment_id(mlflow_client, training.settings, spec.name)
        run = mlflow.start_run(experiment_id=experiment, parent_run_id=parent_run_id, nested=parent_run_id is not None,
                               run_name=f"{spec.name}-{spec.estimator.rsplit('.', 1)[-1]}")
        try:
            yield run
            mlflow.end_run("FINISHED")
        except BaseException:
            mlflow.end_run("FAILED")
            raise


def record_inputs(training: Training, spec: TrainSpec, entity_df: pd.DataFrame, fingerprint: str,
                  extra_tags: dict | None, used: device.Device) -> None:
    """Log a run's lineage: parameters, tags (features, views, fingerprint, code, user), spec and entity rows."""
    views = source_views(spec.features, training.features.get_view)  # on-demand views' sources too
    _log_inputs(spec, entity_df, fingerprint, training.settings, extra_tags, views, used)


def log_outputs(model: Any, spec: TrainSpec, X_train: pd.DataFrame, X_test: pd.DataFrame, y_test: pd.Series,
                predictions: np.ndarray, exported: LoggedOnnx | None = None) -> Any:
    """Log the model (its flavour; a PyTorch module with ``torch.pytorch``), its ONNX export when made here,
    plots, drift reference and imputation values; return the logged model's URI."""
    if spec.family == "torch":
        model_uri = torch_models.log_model(model, X_test.head(100), predictions[:100]).model_uri
    else:
        model_uri = outputs.log_model(model, spec.family, spec.kind, X_test.head(100), predictions[:100],
                                      spec.categories)
    if exported is not None:
        logged_onnx.log(exported)
    outputs.log_plots(model, X_test, y_test, spec.kind, predictions)
    outputs.log_reference(X_train, predictions, spec.seed)
    outputs.log_impute(X_train)
    return model_uri


def gate_and_register(training: Training, spec: TrainSpec, gate: Gate | None, metrics: dict[str, float], run_id: str,
                      model_uri: str, fingerprint: str, register: bool, action: str = "trained",
                      **registration: Any) -> tuple[str | None, str | None]:
    """Check the gate, record the verdict (run tag, audit ``action``) and register a model that passed:
    ``(version, why refused)``."""
    import mlflow

    rejected = gate.check(metrics) if gate else None
    mlflow.set_tag("mlplat.gate", "passed" if rejected is None else f"refused: {rejected}")
    training.audit.record("model", spec.name, action, run_id=run_id, metrics=metrics, refused=rejected,
                          **({"runtime": registration["runtime"]} if registration.get("runtime") else {}))
    version = None
    if rejected is None and register:
        version = training.models.register(spec.name, model_uri, run_id, spec.features, fingerprint, **registration)
    return version, rejected


def with_categories(spec: TrainSpec, X_train: pd.DataFrame) -> TrainSpec:
    """``spec`` with the categories of its string features in the training rows; XGBoost told to take them as
    categoricals (its native support), unless the user said otherwise."""
    categories = categories_of(X_train)
    if not categories:
        return spec
    params = spec.params
    if spec.family == "xgboost" and "enable_categorical" not in params:
        params = {**params, "enable_categorical": True}
    return replace(spec, params=params, categories=categories)


def _positions(rows: np.ndarray) -> slice | np.ndarray:
    """A slice when the positions are one contiguous run (``iloc`` then takes a view, not a copy)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def fit(spec: Any, X: pd.DataFrame, y: pd.Series, client: Any = None, on: dict[str, Any] | None = None) -> Any:
    """Fit the estimator: in process (with ``on``, the parameters choosing its device: see
    :mod:`mlplat.training.device`), or on the Dask cluster behind ``client`` with the library's own path."""
    try:
        if spec.family == "torch":
            return torch_models.fit(spec_build(spec, **(on or {})), X, y, spec.kind, spec.seed)
        if client is None:
            return spec_build(spec, **(on or {})).fit(X, y)
        twin = estimators.dask_twin(spec.estimator, spec.family)
        if twin is None:  # scikit-learn: parallel parts of the fit run through joblib's Dask backend
            import joblib

            with joblib.parallel_backend("dask"):
                return spec_build(spec).fit(X, y)
        return _fit_distributed(twin, spec, X, y, client)
    except (ValueError, TypeError, RuntimeError) as exc:
        texts = text_columns(X) if spec.family == "sklearn" else []
        hint = (f" Its string features {texts} need encoding: give a Pipeline whose ColumnTransformer encodes them "
                "(e.g. OneHotEncoder(handle_unknown='ignore')), or use XGBoost or LightGBM, which take them as "
                "categoricals." if texts else "")
        raise TrainingError(f"{spec.estimator}.fit failed: {exc}{hint}") from exc


def spec_build(spec: Any, **extra: Any) -> Any:
    return estimators.build(spec.estimator, spec.params, spec.template, **extra)


def _fit_distributed(twin: type, spec: Any, X: pd.DataFrame, y: pd.Series, client: Any) -> Any:
    import dask.dataframe as dd

    partitions = max(1, len(client.scheduler_info().get("workers", {})))
    # Scatter the rows to the workers first: inside the task graph they would travel through the scheduler.
    bounds = np.linspace(0, len(X), partitions + 1).astype(int)
    parts = [(X.iloc[a:b], y.iloc[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    dX = dd.from_delayed(client.scatter([p[0] for p in parts]), meta=X.iloc[:0], verify_meta=False)
    dy = dd.from_delayed(client.scatter([p[1] for p in parts]), meta=y.iloc[:0], verify_meta=False)
    model = twin(**spec.params)
    model.client = client
    model.fit(dX, dy)
    if spec.family == "lightgbm":
        return model.to_local()
    with tempfile.TemporaryDirectory() as folder:  # the booster, with the sklearn attributes, as one file
        path = Path(folder) / "model.json"
        model.save_model(path)
        local = spec_build(spec)
        local.load_model(path)
    return local


BOOKKEEPING = "mlplat."  # the prefix of the run parameters mlplat records itself (the estimator's have none)


def bookkeeping(estimator: str, seed: int, target: str, rows: int, split: str, n_features: int) -> dict[str, Any]:
    """The run parameters mlplat records beside the estimator's: ``mlplat.estimator``, ``mlplat.seed``, ..."""
    return {f"{BOOKKEEPING}{k}": v for k, v in {"estimator": estimator, "seed": seed, "target": target, "rows": rows,
                                                 "split": split, "n_features": n_features}.items()}


def _log_inputs(spec: TrainSpec, entity_df: pd.DataFrame, fingerprint: str, settings: Settings, extra: dict | None,
                views: list[str], used: device.Device) -> None:
    import mlflow

    # The estimator's parameters under its own names, as MLflow's autolog logs them; mlplat's own bookkeeping under
    # "mlplat." (BOOKKEEPING), which no estimator parameter is named, so the two never collide.
    mlflow.log_params({**spec.params, **bookkeeping(spec.estimator, spec.seed, spec.target, len(entity_df),
                                                    json.dumps(spec.split), len(spec.features))})
    code = code_fingerprint()
    mlflow.set_tags({"mlplat.features": json.dumps(spec.features), "mlplat.feature_views": json.dumps(views),
                     "mlplat.training_set_fingerprint": fingerprint, "mlplat.user": settings.user,
                     "mlplat.team": settings.team, "mlplat.profile": os.environ.get("MLPLAT_PROFILE", ""),
                     "mlplat.code_path": code["path"] or "", "mlplat.code_sha256": code["sha256"] or "",
                     "mlplat.git_commit": code["git_commit"] or "",
                     "mlplat.device": used.name, "mlplat.device_reason": used.reason, **(extra or {})})
    mlflow.log_dict(asdict(spec), SPEC_ARTIFACT)
    mlflow.log_dict({"code": code, "environment": environment()}, "mlplat/provenance.json")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "entity_df.parquet"
        entity_df.to_parquet(path)
        mlflow.log_artifact(str(path), "mlplat")

@dataclass
class Reproduction:
    """A retrained run next to the original: same data? same metrics?"""

    original_run_id: str
    run_id: str
    original_metrics: dict[str, float]
    metrics: dict[str, float]
    same_training_set: bool

    @property
    def identical(self) -> bool:
        """True when the data fingerprints and every metric match exactly."""
        return self.same_training_set and all(
            self.metrics.get(k) == v for k, v in self.original_metrics.items() if np.isfinite(v))

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.6f}</td><td>{self.metrics.get(k, float('nan')):.6f}</td></tr>"
                       for k, v in self.original_metrics.items())
        return (f"<div><h4>Reproduction of run {self.original_run_id[:8]}: "
                f"{'identical' if self.identical else 'DIFFERENT'}</h4><p>same training set: {self.same_training_set}</p>"
                f"<table><tr><th>metric</th><th>original</th><th>reproduced</th></tr>{rows}</table></div>")


def reproduce(training: Training, run_id: str, client: Any = None) -> Reproduction:
    """Retrain from a run's recorded inputs (pinned feature versions, rows, estimator, seed, split)."""
    spec, entity_df = load_spec(training.settings, run_id)
    with tracking.session(training.settings) as mlflow_client:
        original = mlflow_client.get_run(run_id)
    if original.data.tags.get("mlplat.logged"):
        raise TrainingError(f"Run {run_id} logged a model trained outside mlplat ({original.data.tags['mlplat.logged']}); "
                            "only runs of p.train can be retrained from their record.")
    requests = resolve_refs(spec.features, training.features.get_view, set(entity_df.columns))
    result = _run(training, spec, entity_df, [c for r in requests for c in r.columns], None, client,
                  register=False, extra_tags={"mlplat.reproduces": run_id})
    same = result.training_set_fingerprint == original.data.tags.get("mlplat.training_set_fingerprint")
    return Reproduction(run_id, result.run_id, dict(original.data.metrics), result.metrics, same)
