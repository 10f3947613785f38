"""Batch scoring and evaluation of a registered version on any entity rows.

Each version is fed its own pinned features as of each row's time (a
point-in-time training set), so an old version is scored exactly as it was
trained, whatever the feature views look like today.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlplat.config import Settings
from mlplat.errors import EntityDataFrameError, MissingColumnError
from mlplat.features.definitions import FeatureView
from mlplat.registry.artifacts import TrainSpec, load_model, load_spec, model_inputs
from mlplat.registry.evaluate import figures, predict, score


class FeatureSource(Protocol):
    """Where model inputs come from: feature views by name, and point-in-time training sets.

    :class:`mlplat.features.store.FeatureStore` is one.
    """

    def get_view(self, name: str, version: int | None = None) -> FeatureView: ...

    def get_training_set(self, entity_df: pd.DataFrame, features: Sequence[str], *,
                         timestamp_field: str = "event_timestamp", client: Any = None) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Inputs:
    """A version's model and its feature matrix for some entity rows."""

    spec: TrainSpec
    model: Any
    frame: pd.DataFrame  # the entity rows joined with the version's features
    X: pd.DataFrame


def check_rows(entity_df: Any) -> None:
    """Entity rows to score must be a DataFrame (before any model is looked up)."""
    if not isinstance(entity_df, pd.DataFrame):
        raise EntityDataFrameError(f"The entity rows must be a pandas DataFrame, not {type(entity_df).__name__}.")


def inputs(settings: Settings, features: FeatureSource, name: str, version: str, run_id: str,
           entity_df: pd.DataFrame) -> Inputs:
    """Load ``version`` of ``name`` (trained in run ``run_id``) and build its features for ``entity_df``."""
    from mlplat.features.refs import resolve

    check_rows(entity_df)
    spec, _ = load_spec(settings, run_id)
    if spec.timestamp_field not in entity_df.columns:
        raise MissingColumnError(f"The entity rows need a {spec.timestamp_field!r} column (the time to score as of); "
                                 f"they have {list(entity_df.columns)}.")
    requests = resolve(spec.features, features.get_view, set(entity_df.columns))
    frame = features.get_training_set(entity_df, spec.features, timestamp_field=spec.timestamp_field)
    X = model_inputs(frame, [c for r in requests for c in r.columns], spec.native_categories)
    return Inputs(spec, load_model(settings, name, version, spec.family), frame, X)


def predictions(found: Inputs) -> pd.DataFrame:
    """The entity rows with ``prediction`` (and per-class ``probability_<class>`` for classifiers)."""
    output = predict(found.model, found.X, found.spec.kind)
    keys = found.frame.drop(columns=list(found.X.columns))
    if found.spec.kind != "classifier":
        return keys.assign(prediction=output)
    classes = found.model.classes_
    columns = {f"probability_{c}": output[:, i] for i, c in enumerate(classes)}
    return keys.assign(prediction=classes[output.argmax(axis=1)], **columns)


@dataclass(frozen=True)
class Evaluation:
    """Metrics and plots of one version on labelled rows."""

    name: str
    version: str
    rows: int
    metrics: dict[str, float]
    plots: dict[str, bytes] = field(repr=False)  # PNG images by name

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in self.metrics.items())
        images = "".join(f"<img alt='{escape(k)}' src='data:image/png;base64,{base64.b64encode(v).decode()}'>"
                         for k, v in self.plots.items())
        return (f"<div><h4>{escape(self.name)} version {escape(self.version)} on {self.rows:,} rows</h4>"
                f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>{images}</div>")


def evaluate(found: Inputs, name: str, version: str) -> Evaluation:
    """Score ``version`` of ``name`` on labelled entity rows (its ``found`` inputs carry the version's target)."""
    import matplotlib.pyplot as plt

    target = found.spec.target
    if target not in found.frame.columns:
        raise MissingColumnError(f"Evaluating {name} needs labelled rows: add the target column {target!r}.")
    y = found.frame[target]
    output = predict(found.model, found.X, found.spec.kind)
    metrics = {k: v for k, v in score(found.model, found.X, y, found.spec.kind, output).items() if np.isfinite(v)}
    plots = {}
    for key, figure in figures(found.model, found.X, y, found.spec.kind, output).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        plots[key] = buffer.getvalue()
    return Evaluation(name, version, len(found.frame), metrics, plots)
