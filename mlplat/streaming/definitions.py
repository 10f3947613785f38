"""Stream feature views: windowed aggregations of events, keyed by entity.

>>> from mlplat.streaming import Aggregation, StreamFeatureView
>>> trips = StreamFeatureView(
...     "driver_trips", entities=[driver],
...     aggregations=[Aggregation("fare", "sum", "1h"), Aggregation("fare", "count", "1h"),
...                   Aggregation("rider_id", "approx_count_distinct", "1d")],
...     slide="5min", watermark="2min")
>>> trips.feature_names
['fare_sum_1h', 'fare_count_1h', 'rider_id_approx_count_distinct_1d']

The schema is derived from the aggregations (names ``<column>_<function>_<window>``,
dtypes by function), so it is never repeated. What the windows mean, exactly, is
written in :mod:`mlplat.streaming.windows`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from mlplat import durations
from mlplat.errors import DefinitionError, StreamError
from mlplat.features.definitions import FeatureView, Field, _check_name

if TYPE_CHECKING:
    from mlplat.features.registry import Registry

FUNCTIONS = {  # function -> dtype of the feature it makes
    "count": "int64", "sum": "float64", "mean": "float64", "min": "float64", "max": "float64", "last": "float64",
    "approx_count_distinct": "int64",
}
_SYNONYMS = {"avg": "mean", "average": "mean", "total": "sum", "latest": "last", "distinct": "approx_count_distinct",
             "count_distinct": "approx_count_distinct", "nunique": "approx_count_distinct", "minimum": "min",
             "maximum": "max"}
NUMERIC = ("sum", "mean", "min", "max", "last")  # functions whose column must hold numbers


def parse_duration(value: Any, what: str, allow_zero: bool = False) -> timedelta:
    """A duration (see :func:`mlplat.durations.parse_duration`); anything else is a DefinitionError naming ``what``."""
    return durations.parse_duration(value, what, allow_zero, error=DefinitionError)


def duration_label(duration: timedelta) -> str:
    """The short text of a duration used in feature names: 1h, 5min, 30s, 1d, 500ms."""
    ms = duration // timedelta(milliseconds=1)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def duration_ns(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1) * 1000


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """One windowed aggregate of an event column: ``Aggregation("fare", "sum", "1h")``.

    ``function`` is count, sum, mean, min, max, last (the value of the event with
    the latest event time) or approx_count_distinct (HyperLogLog, about 0.8%
    standard error; any text counts as a value). ``count`` counts events; its
    column may be None. ``name`` defaults to ``<column>_<function>_<window>``.
    """

    column: str | None
    function: str
    window: Any  # "1h", "5min", a timedelta; a timedelta after construction
    name: str | None = None

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            hint = [_SYNONYMS[self.function]] if self.function in _SYNONYMS else \
                difflib.get_close_matches(str(self.function), FUNCTIONS, n=1)
            raise DefinitionError(
                f"Aggregation function {self.function!r} is unknown{f' (did you mean {hint[0]!r}?)' if hint else ''};"
                f" use one of {', '.join(FUNCTIONS)}.")
        if self.column is None and self.function != "count":
            raise DefinitionError(f"Aggregation {self.function!r} needs a column, e.g. Aggregation('fare', "
                                  f"{self.function!r}, '1h'); only count may have column=None.")
        if self.column is not None:
            _check_name("Aggregation column", self.column)
        what = f"Aggregation({self.column!r}, {self.function!r}): window"
        object.__setattr__(self, "window", parse_duration(self.window, what))
        if self.name is None:
            label = duration_label(self.window)
            object.__setattr__(self, "name", f"{self.column or 'events'}_{self.function}_{label}")
        _check_name("Aggregation name", self.name)

    @property
    def dtype(self) -> str:
        return FUNCTIONS[self.function]

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "function": self.function, "window": self.window.total_seconds(),
                "name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aggregation:
        return cls(data["column"], data["function"], timedelta(seconds=data["window"]), data.get("name"))


@dataclasses.dataclass(frozen=True)
class StreamFeatureView(FeatureView):
    """A feature view kept fresh from a stream of events by ``mlplat stream``.

    ``aggregations`` are computed per entity over tumbling windows (``slide=None``:
    back-to-back windows of each aggregation's length) or sliding ones (windows
    that advance by ``slide``; every window must be a multiple of it).
    ``watermark`` is the allowed lateness: an event older than its entity's
    latest event minus ``watermark`` is dead-lettered as late. ``stream`` is the
    Redis stream key producers ``XADD`` to (default ``<online prefix>:events:<view name>``),
    or ``kafka://host:port[,host:port]/topic[?setting=value&...]`` to read a Kafka topic of JSON
    events instead (the settings are confluent-kafka consumer settings).
    Events carry the join keys, ``timestamp_field`` (ISO 8601 or epoch seconds,
    milliseconds, microseconds or nanoseconds) and the aggregated columns.
    ``ttl`` defaults to the longest window: an entity without events for that
    long reads as missing online.
    """

    schema: list[Field] = dataclasses.field(default_factory=list)  # derived from the aggregations
    ttl: Any = "window"  # the longest window; a duration, or None to serve values however old
    aggregations: list[Aggregation] = dataclasses.field(default_factory=list)
    slide: Any = None
    watermark: Any = timedelta(minutes=1)
    stream: str | None = None

    kind: ClassVar[str] = "stream"

    def __post_init__(self) -> None:
        _check_name("FeatureView", self.name)
        aggregations = [Aggregation.from_dict(a) if isinstance(a, dict) else a for a in self.aggregations]
        if not aggregations or not all(isinstance(a, Aggregation) for a in aggregations):
            raise DefinitionError(f"StreamFeatureView {self.name!r} needs aggregations=[Aggregation('fare', 'sum', "
                                  "'1h'), ...].")
        object.__setattr__(self, "aggregations", aggregations)
        slide = None if self.slide is None else parse_duration(self.slide, f"StreamFeatureView {self.name!r}: slide")
        object.__setattr__(self, "slide", slide)
        object.__setattr__(self, "watermark", parse_duration(
            self.watermark, f"StreamFeatureView {self.name!r}: watermark", allow_zero=True))
        for agg in aggregations:
            if slide is not None and agg.window % slide:
                raise DefinitionError(
                    f"StreamFeatureView {self.name!r}: window {duration_label(agg.window)} of {agg.name} is not a "
                    f"multiple of slide={duration_label(slide)}; sliding windows advance by whole slides.")
        derived = [Field(a.name, a.dtype, f"{a.function} of {a.column or 'events'} over {duration_label(a.window)}")
                   for a in aggregations]
        given = list(self.schema)
        if given and [(f.name, f.dtype) for f in given] != [(f.name, f.dtype) for f in derived]:
            raise DefinitionError(f"StreamFeatureView {self.name!r}: leave schema out; it is derived from the "
                                  f"aggregations as {[f.name for f in derived]}.")
        object.__setattr__(self, "schema", derived)
        if isinstance(self.ttl, str):
            ttl = max(a.window for a in aggregations) if self.ttl == "window" else \
                parse_duration(self.ttl, f"StreamFeatureView {self.name!r}: ttl")
            object.__setattr__(self, "ttl", ttl)
        if self.stream is not None and (not isinstance(self.stream, str) or not self.stream or (
                self.stream.startswith("kafka://") and not all(self.kafka[:2]))):
            raise DefinitionError(f"StreamFeatureView {self.name!r}: stream={self.stream!r}; give a Redis stream key "
                                  "or kafka://host:9092/topic.")
        super().__post_init__()
        taken = {*self.join_keys, self.timestamp_field}
        clashes = sorted({a.column for a in aggregations} & taken)
        if clashes:
            raise DefinitionError(f"StreamFeatureView {self.name!r} aggregates {clashes}, which are its join keys or "
                                  "timestamp field; aggregate a value column (count needs none).")

    # -- what the windows are made of ------------------------------------------------
    @property
    def granularity(self) -> timedelta:
        """The length of the buckets state is kept in: the slide, or for tumbling windows the gcd of the windows."""
        if self.slide is not None:
            return self.slide
        ms = 0
        for agg in self.aggregations:
            ms = math.gcd(ms, agg.window // timedelta(milliseconds=1))
        return timedelta(milliseconds=ms)

    @property
    def value_columns(self) -> list[str]:
        """Event columns aggregated as numbers."""
        return list(dict.fromkeys(a.column for a in self.aggregations if a.function in NUMERIC))

    @property
    def distinct_columns(self) -> list[str]:
        """Event columns whose distinct values are counted."""
        return list(dict.fromkeys(a.column for a in self.aggregations if a.function == "approx_count_distinct"))

    @property
    def kafka(self) -> tuple[str, str, dict[str, str]] | None:
        """(bootstrap servers, topic, client settings) when the events come from Kafka, else None.

        ``kafka://broker1:9092,broker2:9092/trips?security.protocol=SSL`` : query
        parameters are confluent-kafka (librdkafka) consumer settings.
        """
        if not (self.stream or "").startswith("kafka://"):
            return None
        from urllib.parse import parse_qsl

        rest, _, query = self.stream.removeprefix("kafka://").partition("?")
        servers, _, topic = rest.partition("/")
        return servers, topic, dict(parse_qsl(query))

    def stream_key(self, prefix: str) -> str:
        """The Redis stream producers send this view's events to."""
        return self.stream or f"{prefix}:events:{self.name}"

    # -- persistence ---------------------------------------------------------------------
    def kind_changes(self, old: FeatureView) -> list[dict[str, Any]]:
        """New aggregations or a new slide make a new version (the state means something else);
        the watermark and the stream key change in place."""
        assert isinstance(old, StreamFeatureView)
        changes = []
        before, after = self._schema_part(), old._schema_part()
        for part in ("aggregations", "slide"):
            if before[part] != after[part]:
                changes.append({"change": f"{part} changed", "from": after[part], "to": before[part],
                                "incompatible": True})
        for attr in ("watermark", "stream"):
            if getattr(old, attr) != getattr(self, attr):
                changes.append({"change": f"{attr} changed", "from": str(getattr(old, attr)),
                                "to": str(getattr(self, attr)), "incompatible": False})
        return changes

    def _schema_part(self) -> dict[str, Any]:
        part = super()._schema_part()
        part["aggregations"] = [[a.column, a.function, a.window.total_seconds()] for a in self.aggregations]
        part["slide"] = None if self.slide is None else self.slide.total_seconds()
        return part

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["aggregations"] = [a.to_dict() for a in self.aggregations]
        data["slide"] = None if self.slide is None else self.slide.total_seconds()
        data["watermark"] = self.watermark.total_seconds()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamFeatureView:
        data = dict(data)
        data.pop("kind", None)
        data["aggregations"] = [Aggregation.from_dict(a) for a in data["aggregations"]]
        data["slide"] = None if data.get("slide") is None else timedelta(seconds=data["slide"])
        data["watermark"] = timedelta(seconds=data.get("watermark") or 0)
        return super().from_dict(data)


def stream_view(registry: Registry, name: str | StreamFeatureView) -> StreamFeatureView:
    """The registered stream view called ``name``; a StreamError when it is a batch view."""
    view = registry.get_view(name.name if isinstance(name, StreamFeatureView) else name)
    if not isinstance(view, StreamFeatureView):
        raise StreamError(f"{view.name!r} is a batch feature view, not a stream view; define it as "
                          "StreamFeatureView(..., aggregations=[...]) to feed it from a stream.")
    return view
