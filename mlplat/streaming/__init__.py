"""Streaming features: windowed aggregations of events kept fresh online by ``mlplat stream``.

>>> from mlplat.streaming import Aggregation, StreamFeatureView

Built on the feature store's parts (registry, online and offline stores), which it is
given, and on nothing higher: ``definitions`` and ``windows`` say what a view computes;
``events`` and ``sources`` read and decode entries; ``consumer`` applies them exactly once
(``state`` holds the windows, ``scripts`` the Lua it shares with the backfill); ``log``
keeps accepted events offline; ``backfill`` recomputes rows from that log; ``streams`` is
``p.streams``.
"""

from mlplat.streaming.definitions import Aggregation, StreamFeatureView

__all__ = ["Aggregation", "StreamFeatureView"]
