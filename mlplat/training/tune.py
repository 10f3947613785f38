"""Hyperparameter search: trials on the Dask cluster, each a nested MLflow run; the best is trained and registered.

Trials fit on the earlier part of the training rows and are scored on the
later part (a validation slice), so the test rows of the final run stay unseen
until the chosen model is evaluated on them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import InvalidArgument
from mlplat.progress import ProgressBar, progress_bar
from mlplat.registry import tracking
from mlplat.registry.artifacts import NATIVE_CATEGORICAL, TrainSpec, categories_of, model_inputs
from mlplat.registry.evaluate import LOWER_IS_BETTER, Gate, Split, check_target, metric_names, score, split_rows
from mlplat.training import estimators
from mlplat.training.run import BOOKKEEPING, Training, TrainResult, _run, check_inputs


@dataclass
class TuneResult:
    """Every trial's parameters and validation metrics, the best parameters, and the final run."""

    best_params: dict[str, Any]
    metric: str
    trials: pd.DataFrame
    result: TrainResult
    parent_run_id: str

    def _repr_html_(self) -> str:
        return (f"<div><h4>{escape(self.result.name)}: {len(self.trials)} trials, best {self.metric} "
                f"{self.trials[self.metric].max() if self.metric not in LOWER_IS_BETTER else self.trials[self.metric].min():.4f}"
                f"</h4><p>best parameters: {escape(str(self.best_params))}</p>{self.trials.to_html(index=False)}"
                f"{self.result._repr_html_()}</div>")


def candidates(space: dict[str, Any], search: str, n_trials: int, seed: int) -> list[dict[str, Any]]:
    """Parameter sets: every combination (``grid``) or ``n_trials`` random draws (``random``).

    Values are lists to choose from; in a random search a ``(low, high)`` tuple
    draws uniformly (integers when both ends are ints).
    """
    if not space or not isinstance(space, dict):
        raise InvalidArgument("tune() needs a search space, e.g. {'max_depth': [3, 5, 7]}.")
    if search == "grid":
        for name, values in space.items():
            if not isinstance(values, list):
                raise InvalidArgument(f"Grid values of {name!r} must be a list, e.g. [3, 5, 7].")
        return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
    if search != "random":
        raise InvalidArgument(f"search={search!r}; use 'grid' or 'random'.")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_trials):
        draw = {}
        for name, values in space.items():
            if isinstance(values, tuple) and len(values) == 2:
                low, high = values
                draw[name] = int(rng.integers(low, high + 1)) if isinstance(low, int) and isinstance(high, int) \
                    else float(rng.uniform(low, high))
            else:
                draw[name] = values[int(rng.integers(len(values)))]
        draws.append(draw)
    return draws


def trial(path: str, params: dict[str, Any], kind: str, data: tuple) -> dict[str, float]:
    """Fit one parameter set on the fitting rows and score it on the validation rows (runs on a worker)."""
    X_fit, y_fit, X_val, y_val = data
    model = estimators.load_class(path)(**params).fit(X_fit, y_fit)
    return score(model, X_val, y_val, kind)


def tune(training: Training, estimator: Any, space: dict[str, Any], *, features: list[str], entity_df: pd.DataFrame,
         target: str, name: str, search: str = "grid", n_trials: int = 10, metric: str | None = None,
         params: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
         split: dict[str, Any] | None = None, timestamp_field: str = "event_timestamp", seed: int = 0,
         client: Any = None, register: bool = True, progress: bool | ProgressBar | None = None) -> TuneResult:
    """Search ``space`` for the best parameters, then train, gate and register them. See ``Platform.tune``."""
    import mlflow

    base = estimators.resolve(estimator, params, seed)
    sets = candidates(space, search, n_trials, seed)
    specs = [estimators.resolve(base.path, {**base.params, **s}, seed) for s in sets]  # bad names fail here
    metric = metric or metric_names(base.kind)[0]
    if metric not in metric_names(base.kind):
        raise InvalidArgument(f"metric {metric!r} is not computed for a {base.kind}; use one of {metric_names(base.kind)}.")
    gate = Gate.parse(validation, base.kind)
    split_ = Split.parse(split)
    requests = check_inputs(training.features, features, entity_df, target, name)
    pinned = [f"{r.view.name}@{r.view.version}:{f}" for r in requests for f in r.features]
    columns = [c for r in requests for c in r.columns]
    frame = training.features.get_training_set(entity_df, pinned, timestamp_field=timestamp_field, client=client)
    train_rows, _ = split_rows(frame, split_, timestamp_field, seed)
    fitting = frame.iloc[train_rows]
    fit_rows, val_rows = split_rows(fitting, split_, timestamp_field, seed)
    X, y = model_inputs(fitting, columns), fitting[target]
    categories = categories_of(X.iloc[fit_rows]) if base.family in NATIVE_CATEGORICAL else {}
    if categories:  # boosters take string features as categoricals, as in the final run (run.with_categories)
        X = model_inputs(fitting, columns, categories)
        if base.family == "xgboost":
            specs = [replace(s, params={"enable_categorical": True, **s.params}) for s in specs]
    check_target(y.iloc[fit_rows], y.iloc[val_rows], base.kind, target)
    data = (X.iloc[fit_rows], y.iloc[fit_rows], X.iloc[val_rows], y.iloc[val_rows])
    better = min if metric in LOWER_IS_BETTER else max
    with progress_bar(len(specs), f"tune {name}", progress, unit="trial") as bar:
        if client is None:
            scores = []
            for s in specs:
                scores.append(trial(s.path, s.params, s.kind, data))
                _trial_done(bar, metric, better, scores)
        else:
            from distributed import as_completed

            shared = client.scatter(data, broadcast=True)
            futures = [client.submit(trial, s.path, s.params, s.kind, shared, pure=False) for s in specs]
            finished = []
            for future in as_completed(futures):
                finished.append(future.result())
                _trial_done(bar, metric, better, finished)
            scores = client.gather(futures)

    best = better(range(len(sets)), key=lambda i: scores[i][metric])
    with tracking.session(training.settings) as mlflow_client:
        experiment = tracking.experiment_id(mlflow_client, training.settings, name)
        with mlflow.start_run(experiment_id=experiment, run_name=f"{name}-tune") as parent:
            mlflow.log_params({f"{BOOKKEEPING}search": search, f"{BOOKKEEPING}trials": len(sets),
                               f"{BOOKKEEPING}metric": metric})
            for trial_spec, trial_scores in zip(specs, scores):
                with mlflow.start_run(experiment_id=experiment, nested=True, run_name="trial"):
                    mlflow.log_params(trial_spec.params)  # the estimator's own names, as in the final run
                    mlflow.log_metrics({f"val_{k}": v for k, v in trial_scores.items() if np.isfinite(v)})
            mlflow.log_params({f"{BOOKKEEPING}best.{k}": v for k, v in sets[best].items()})
            training.audit.record("model", name, "tuned", run_id=parent.info.run_id, search=search, trials=len(sets),
                                  metric=metric, best=sets[best], score=scores[best][metric])
            spec = TrainSpec(specs[best].path, specs[best].params, base.kind, base.family, pinned, target,
                             timestamp_field, vars(split_), seed, vars(gate) if gate else None, name)
            result = _run(training, spec, entity_df, columns, gate, client, register, parent_run_id=parent.info.run_id,
                          progress=progress)
    trials = pd.DataFrame([{**s, **sc} for s, sc in zip(sets, scores)])
    return TuneResult(sets[best], metric, trials, result, parent.info.run_id)


def _trial_done(bar: Any, metric: str, better: Callable[..., float], scores: list[dict[str, float]]) -> None:
    """Count one more finished trial and show the best validation score so far."""
    bar.set_postfix({f"best val_{metric}": better(s[metric] for s in scores)})
    bar.update()

