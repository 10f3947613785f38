"""Streaming features: windowed aggregations of events kept fresh online by ``mlplat stream``.

>>> from mlplat.streaming import Aggregation, StreamFeatureView
"""

from mlplat.streaming.definitions import Aggregation, StreamFeatureView

__all__ = ["Aggregation", "StreamFeatureView"]
