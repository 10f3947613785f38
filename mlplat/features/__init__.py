"""Feature store: definitions, registry, offline and online stores."""

from mlplat.features.compute import BatchFeatureView
from mlplat.features.definitions import Entity, FeatureView, Field
from mlplat.features.on_demand import OnDemandFeatureView

__all__ = ["BatchFeatureView", "Entity", "FeatureView", "Field", "OnDemandFeatureView"]
