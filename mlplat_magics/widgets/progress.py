"""``TrainingProgress``: a progress bar with the current stage and the metrics known so far."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets

from mlplat_magics.widgets.tables import table


class TrainingProgress:
    """A live bar for ``p.train(..., progress=TrainingProgress())`` and ``p.tune(..., progress=...)``.

    Shows the step count, the stage (``set_postfix_str``) and a table of the latest metrics
    (``set_postfix``); it has the part of tqdm's interface mlplat reports to, so any ``progress=``
    takes it. Display it (last expression of a cell, or ``display(bar)``) before training starts.
    It is not itself a widget: ``close()`` means "done", as in tqdm, and keeps it on screen.
    """

    def __init__(self, description: str = ""):
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description=description,
                                       style={"description_width": "initial"})
        self.stage = widgets.Label()
        self.metrics = widgets.HTML()
        self.latest_metrics: dict[str, Any] = {}
        self.widget = widgets.VBox([widgets.HBox([self.bar, self.stage]), self.metrics])

    @property
    def n(self) -> int:
        """Steps done."""
        return self.bar.value

    @property
    def total(self) -> int:
        """Steps in the current task."""
        return self.bar.max

    def reset(self, total: int | None = None) -> None:
        """Start again from step 0 (of ``total`` steps, when given)."""
        if total is not None:
            self.bar.max = total
        self.bar.value = 0
        self.bar.bar_style = ""

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.bar.description = desc or ""

    def update(self, n: int = 1) -> None:
        self.bar.value = min(self.bar.value + n, self.bar.max)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Show the stage now running."""
        self.stage.value = s

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Show these metrics (they replace the ones shown before)."""
        self.latest_metrics = {**(ordered_dict or {}), **kwargs}
        self.metrics.value = table([{"metric": k, "value": v} for k, v in self.latest_metrics.items()])

    def close(self) -> None:
        """Mark the work finished: green when every step was done."""
        if self.bar.value >= self.bar.max and self.bar.bar_style != "danger":
            self.bar.bar_style = "success"

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if error is not None:
            self.bar.bar_style = "danger"
            self.stage.value = f"failed: {' '.join(str(error).split())}"
        self.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.widget._repr_mimebundle_(**kwargs)
