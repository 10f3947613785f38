"""``FeatureCatalog``: search feature views and see one's definition, freshness and statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import ipywidgets as widgets

from mlplat_magics.widgets.choices import offer
from mlplat_magics.widgets.status import StatusLine


class FeatureCatalog(widgets.VBox):
    """A search box, the matching feature views, and the selected view's details.

    Typing filters views by name, description, feature names and descriptions and tags
    (``p.features.search``). The details are the view's definition, its freshness
    (``p.features.freshness``) and statistics of its recent rows (``p.features.stats``).
    """

    def __init__(self, platform: Any, stats_window: timedelta | None = timedelta(days=7)):
        self.platform = platform
        self.stats_window = stats_window
        self.search = widgets.Text(placeholder="search views, features, descriptions, tags", continuous_update=True)
        self.views = widgets.Select(options=[], rows=12, layout={"width": "240px"})
        self.detail = widgets.HTML()
        self.status = StatusLine()
        super().__init__([self.search, widgets.HBox([self.views, self.detail]), self.status])
        self.search.observe(lambda _: self.status.attempt(self._filter, fresh=True), names="value")
        self.views.observe(self._chosen, names="value")
        self.status.attempt(self._filter)

    def _filter(self) -> None:
        names = [view.name for view in self.platform.features.search(self.search.value)]
        offer(self.views, names, self._chosen)
        if not names:
            self.detail.value = ""

    def _chosen(self, _change: Any) -> None:
        self.status.attempt(self._show, fresh=True)

    def _show(self) -> None:
        if self.views.value is None:
            return
        features = self.platform.features
        view = features.get_view(self.views.value)
        freshness = features.freshness(view.name, view.version)
        stats = features.stats(view.name, view.version, self.stats_window)
        self.detail.value = view._repr_html_() + freshness._repr_html_() + stats._repr_html_()
