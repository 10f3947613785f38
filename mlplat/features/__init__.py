"""Feature store: definitions, registry, offline and online stores."""

from mlplat.features.definitions import Entity, FeatureView, Field
from mlplat.features.on_demand import OnDemandFeatureView

__all__ = ["BatchFeatureView", "Entity", "FeatureView", "Field", "OnDemandFeatureView"]


def __getattr__(name: str):  # BatchFeatureView's module needs pandas and pyarrow: imported on first use
    if name == "BatchFeatureView":
        from mlplat.features.compute import BatchFeatureView

        return BatchFeatureView
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
