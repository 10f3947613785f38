"""``p.streams``: send events to stream views, run their consumer, read dead letters, backfill.

>>> p.streams.send("driver_trips", [{"driver_id": 7, "event_timestamp": "2024-06-01T08:00:00Z", "fare": 12.5}])
>>> p.streams.process()                 # apply what is waiting, here (`mlplat stream` does it continuously)
>>> p.features.get_online_features(["driver_trips:fare_sum_1h"], {"driver_id": [7]}).to_dict()
>>> p.streams.dead_letters("driver_trips")
>>> p.streams.backfill("driver_trips", start="2024-06-01", end="2024-07-01")   # rows for get_training_set

:class:`Streams` is given what it uses (:class:`mlplat.platform.Platform` wires them): the feature
registry (the views), the offline store (backfilled rows), the online store (whose Redis holds
the streams, and whose prefix names their keys), the event log and the allowed clock skew.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import redis

from mlplat.errors import InvalidArgument, StreamError
from mlplat.features.offline import OfflineStore
from mlplat.features.online import RedisOnlineStore
from mlplat.features.registry import Registry
from mlplat.features.schema import conform
from mlplat.streaming.backfill import compute
from mlplat.streaming.consumer import (
    ERRORS_KEPT_S,
    BatchResult,
    Consumer,
    dead_letter_stream,
    errors_key,
    group_name,
)
from mlplat.streaming.definitions import StreamFeatureView, stream_view
from mlplat.streaming.log import EventLog
from mlplat.streaming.windows import Plan
from mlplat.times import nanoseconds

SEND_MAXLEN = 1_000_000  # entries a stream keeps when the consumer falls behind (approximately)


class Streams:
    """Stream feature views of one platform."""

    def __init__(self, registry: Registry, offline: OfflineStore, online: RedisOnlineStore, events_log: EventLog,
                 max_clock_skew: timedelta = timedelta(minutes=5)):
        self.registry, self.offline, self.online, self.log = registry, offline, online, events_log
        self.max_clock_skew = max_clock_skew  # events dated later than now + this are dead-lettered as "future"
        self.prefix = online.prefix

    @property
    def client(self) -> redis.Redis:
        """The Redis holding the streams: the online store's."""
        return self.online.client

    def view(self, name: str) -> StreamFeatureView:
        return stream_view(self.registry, name)

    def stream_key(self, view: str) -> str:
        """The Redis stream that producers ``XADD`` the view's events to."""
        return self.view(view).stream_key(self.prefix)

    def send(self, view: str, events: Any, maxlen: int | None = SEND_MAXLEN) -> list[str]:
        """Append events (a DataFrame, a list of dicts or a dict of columns) to the view's stream; return their ids.

        Any producer can do the same with ``XADD <stream> * driver_id 7 event_timestamp 1717228800 fare 12.5``;
        this pipelines the ``XADD`` s. Datetimes are sent as epoch nanoseconds, numbers exactly (``repr``).
        """
        definition = self.view(view)
        if definition.kafka:
            raise StreamError(f"{definition.name!r} reads Kafka topic {definition.kafka[1]!r}; produce its events "
                              "with a Kafka producer (JSON objects with the same fields).")
        frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame(
            events if isinstance(events, Mapping) else list(events))
        columns = {name: _texts(frame[name]) for name in frame.columns}
        stream = definition.stream_key(self.prefix)
        pipe = self.client.pipeline(transaction=False)
        ids: list[str] = []
        names = list(columns)
        for i in range(len(frame)):
            fields = {name: columns[name][i] for name in names if columns[name][i] is not None}
            pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
            if len(pipe) >= 10_000:
                ids += [i.decode() for i in pipe.execute()]
        ids += [i.decode() for i in pipe.execute()]
        return ids

    def consumer(self, views: Sequence[str] | None = None, batch: int = 20_000, name: str | None = None,
                 claim_idle: float = 60.0) -> Consumer:
        """A consumer of the stream views (default all), as ``mlplat stream`` runs; ``.serve(stop)`` loops."""
        return Consumer(self.registry, self.online, self.log, max_clock_skew=self.max_clock_skew,
                        views=list(views) if views else None, batch=batch, name=name, claim_idle=claim_idle)

    def process(self, views: Sequence[str] | None = None, batch: int = 20_000, name: str | None = None) -> list[BatchResult]:
        """Apply every event waiting in the views' Redis streams, here and now; return what each batch did.

        (A Kafka view's consumer needs seconds to join its group: run ``mlplat stream`` for those.)
        """
        consumer = self.consumer(views, batch, name)
        try:
            return consumer.drain()
        finally:
            consumer.close()

    def dead_letters(self, view: str, count: int | None = 1000) -> pd.DataFrame:
        """The newest ``count`` dead-lettered events (None: all): entry, reason, detail and the fields sent."""
        definition = self.view(view)
        entries = self.client.xrevrange(dead_letter_stream(definition, self.prefix), count=count)
        rows = [{k.decode(errors="backslashreplace"): v.decode(errors="replace") for k, v in fields.items()}
                for _, fields in reversed(entries)]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=["entry", "reason", "detail"])
        frame = frame.rename(columns={"_entry": "entry", "_reason": "reason", "_detail": "detail"})
        return frame[["entry", "reason", "detail", *[c for c in frame.columns if c not in ("entry", "reason",
                                                                                          "detail")]]]

    def events(self, view: str, start: datetime | str | None = None, end: datetime | str | None = None) -> pd.DataFrame:
        """The accepted events logged offline with ``start <= event time < end``, in stream order."""
        definition = self.view(view)
        return self.log.frame(definition, _optional_ns(start, "start"), _optional_ns(end, "end"))

    def backfill(self, view: str, start: datetime | str | None = None, end: datetime | str | None = None,
                 write: bool = True) -> pd.DataFrame:
        """Compute the view's rows from its logged events, as the stream did, and (``write``) store them offline.

        One row per entity and bucket (``slide``, or the window for tumbling windows) that
        starts in ``[start, end)`` and holds an event of it, timestamped with the bucket's end,
        so ``get_training_set`` serves stream features point in time. An entity's latest row is
        the value the stream put online. Writing the same range twice stores its rows twice
        (readers see equal values).
        """
        definition = self.view(view)
        start_ns, end_ns = _optional_ns(start, "start"), _optional_ns(end, "end")
        if start_ns is not None and end_ns is not None and start_ns >= end_ns:
            raise InvalidArgument(f"backfill(start={start}, end={end}): start is not before end.")
        plan = Plan(definition)
        since = None if start_ns is None else (start_ns // plan.g - plan.slots + 1) * plan.g
        events = self.log.read(definition, since, end_ns)
        rows = compute(definition, events, self.client, self.prefix, start_ns, end_ns)
        if write and len(rows):
            self.offline.write(definition, conform(definition, _arrow(definition, rows)))
            self.registry.audit.record("feature_view", definition.name, "backfilled", definition.version, rows=len(rows),
                               start=start, end=end)
        return rows

    def lag(self, view: str) -> dict[str, int]:
        """Entries waiting in the view's stream for its consumers (``pending``: read but not yet applied)."""
        definition = self.view(view)
        if definition.kafka:
            raise StreamError(f"{definition.name!r} reads Kafka: see its consumer group {group_name(definition)!r} "
                              "with Kafka's tools (kafka-consumer-groups --describe).")
        stream, group = definition.stream_key(self.prefix), group_name(definition)
        try:
            groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                      for g in (self.client.xinfo_groups(stream) if self.client.exists(stream) else [])}
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: something else was written at the stream's key
            raise StreamError(f"{stream}, the stream of {definition.name!r}, cannot be read as a stream ({exc}); "
                              "whatever was written there must be removed (DEL) for producers to XADD again.") from None
        found = groups.get(group)
        if found is None:
            return {"waiting": int(self.client.xlen(stream)) if self.client.exists(stream) else 0, "pending": 0}
        waiting = found.get("lag")  # Redis 7; counted here on older servers, or when Redis cannot tell
        if waiting is None:
            last = found["last-delivered-id"]
            waiting = len(self.client.xrange(stream, min=f"({_text(last)}", max="+"))
        return {"waiting": int(waiting), "pending": int(found["pending"])}


    def errors(self, view: str | None = None) -> pd.DataFrame:
        """Why stream consumers cannot apply views' entries now: one row per view and consumer (``mlplat stream``
        process) whose last try failed, with the error, since when and how many tries; empty when all apply.

        A failing view's entries stay in its stream, and the consumer tries again with back-off; the other
        views go on. A row goes away when the view applies again (or its consumer has not tried for 10 min).
        """
        found = self.client.hgetall(errors_key(self.prefix))
        rows = []
        for field, value in found.items():
            name, _, consumer = field.decode(errors="replace").partition("\x1f")
            record = json.loads(value)
            if (view is None or name == view) and time.time() - record["last"] < ERRORS_KEPT_S:
                rows.append({"view": name, "consumer": consumer, "error": record["error"],
                             "since": pd.Timestamp(record["since"], unit="s", tz="UTC"),
                             "last": pd.Timestamp(record["last"], unit="s", tz="UTC"), "attempts": record["attempts"]})
        columns = ["view", "consumer", "error", "since", "last", "attempts"]
        return pd.DataFrame(rows, columns=columns).sort_values(["view", "consumer"], ignore_index=True)


def _arrow(view: StreamFeatureView, rows: pd.DataFrame) -> pa.Table:
    """``rows`` as Arrow, the timestamp handed over as naive UTC (pandas deprecates the implicit way)."""
    ts = view.timestamp_field
    stamps = pa.array(rows[ts].dt.tz_convert(None).to_numpy(), pa.timestamp("ns", tz="UTC"))
    return pa.Table.from_pandas(rows.drop(columns=[ts]), preserve_index=False).append_column(ts, stamps)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(column: pd.Series) -> list[str | None]:
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
        ns = stamps.dt.as_unit("ns").astype("int64").to_numpy()
        return [None if missing else str(v) for v, missing in zip(ns.tolist(), stamps.isna().tolist())]
    if pd.api.types.is_float_dtype(column):
        return [None if np.isnan(v) else repr(v) for v in column.astype(np.float64).tolist()]
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else
            (str(int(pd.Timestamp(v).value)) if isinstance(v, datetime) else str(v)) for v in column.tolist()]


def _optional_ns(moment: datetime | str | None, name: str) -> int | None:
    return None if moment is None else nanoseconds(moment, name)
