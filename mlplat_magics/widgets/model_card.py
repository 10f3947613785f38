"""``ModelCard``: a registered model's versions and lineage, with Promote and Deploy buttons."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from mlplat.errors import InvalidArgument
from mlplat_magics.widgets.choices import offer
from mlplat_magics.widgets.status import StatusLine, run_action
from mlplat_magics.widgets.tables import table


class ModelCard(widgets.VBox):
    """Versions of ``name`` (aliases, metrics), the selected version's lineage, and actions on it.

    **Promote** calls ``p.models.promote(name, version)`` (a refused promotion shows why and changes
    nothing), **Deploy** calls ``p.deploy(name, version)``, **Refresh** reloads; after each the table
    reloads and the status line says what happened.
    """

    def __init__(self, platform: Any, name: str):
        self.platform = platform
        self.name = name
        self.versions = widgets.HTML()
        self.version = widgets.Dropdown(description="version", options=[])
        self.promote_button = widgets.Button(description="Promote", icon="trophy")
        self.deploy_button = widgets.Button(description="Deploy", icon="rocket", button_style="primary")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.lineage = widgets.HTML()
        self.status = StatusLine()
        self.buttons = [self.promote_button, self.deploy_button, self.refresh_button]
        super().__init__([widgets.HTML(f"<h3>{escape(name)}</h3>"), self.versions,
                          widgets.HBox([self.version, *self.buttons]), self.lineage, self.status])
        self.version.observe(self._chosen, names="value")
        self.promote_button.on_click(lambda _: self._act(self._promote))
        self.deploy_button.on_click(lambda _: self._act(self._deploy))
        self.refresh_button.on_click(lambda _: self._act(lambda: f"reloaded {self.name}"))
        self.status.attempt(self._reload)

    def _act(self, action: Callable[[], str]) -> None:
        run_action(self.status, self.buttons, action, self._reload)

    def _promote(self) -> str:
        done = self.platform.models.promote(self.name, self._selected())
        if done.champion_score is not None:
            return (f"version {done.version} is now champion ({done.metric} {done.challenger_score:.4f} vs "
                    f"{done.champion_score:.4f} for version {done.previous})")
        return f"version {done.version} is now champion" + ("" if done.previous else " (the first one)")

    def _deploy(self) -> str:
        deployment = self.platform.deploy(self.name, self._selected())
        return f"deployed version {deployment.version}: {deployment.status} at grpc://{deployment.endpoint}"

    def _selected(self) -> str:
        if self.version.value is None:
            raise InvalidArgument(f"{self.name!r} has no version to act on; train one first.")
        return self.version.value

    def _reload(self) -> None:
        versions = self.platform.models.versions(self.name)
        metrics = sorted({metric for v in versions for metric in v.metrics})
        self.versions.value = table([
            {"version": v.version, "aliases": ", ".join(v.aliases), "archived": v.archived, "created": v.created,
             **{metric: v.metrics.get(metric) for metric in metrics}} for v in versions])
        labels = [(f"{v.version} ({', '.join(v.aliases)})" if v.aliases else v.version, v.version) for v in versions]
        if not offer(self.version, labels, self._chosen):
            self._show_lineage()  # the same version, but its aliases may have moved

    def _chosen(self, _change: Any) -> None:
        self.status.attempt(self._show_lineage, fresh=True)

    def _show_lineage(self) -> None:
        self.lineage.value = "" if self.version.value is None else \
            self.platform.lineage(self.name, self.version.value)._repr_html_()
