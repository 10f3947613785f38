"""Feature store: definitions, registry, offline and online stores."""

from mlplat.features.definitions import Entity, FeatureView, Field

__all__ = ["Entity", "FeatureView", "Field"]
