"""ipywidgets for notebooks. Each lays out what library functions return and calls them on a click; nothing more.

>>> from mlplat_magics.widgets import FeatureCatalog, JobPanel, ModelCard, TrainingProgress
>>> FeatureCatalog(p)                                   # search views, see schema, freshness, statistics
>>> p.train(..., progress=TrainingProgress())           # a live bar with the run's metrics
>>> ModelCard(p, "churn"), JobPanel(p)                  # promote, deploy; run, pause, resume jobs

An ``MlplatError`` shows as one red line in the widget's status area.
"""

try:
    import ipywidgets  # noqa: F401
except ImportError:
    from mlplat.errors import MissingDependency

    raise MissingDependency("mlplat_magics.widgets needs ipywidgets; pip install 'mlplat[jobs]'.") from None

from mlplat_magics.widgets.catalog import FeatureCatalog
from mlplat_magics.widgets.jobs import JobPanel
from mlplat_magics.widgets.model_card import ModelCard
from mlplat_magics.widgets.progress import TrainingProgress

__all__ = ["FeatureCatalog", "JobPanel", "ModelCard", "TrainingProgress"]
