"""The stream consumer: applies batches of events to window state and online values, exactly once.

For each batch a source hands out (``XREADGROUP``, ``COUNT`` = batch), in one
optimistic Redis transaction:

1. ``WATCH`` the version keys of the stripes the batch's entities hash to (256 per view) and read
   their state (one ``MGET``);
2. decide which events are late (in stream order, against each entity's latest
   event), add the others to the state (numpy, no per-event Python), compute the
   touched entities' online values (:meth:`mlplat.streaming.windows.Plan.fold`) and
   pack them as online records (:class:`mlplat.features.online.RecordCodec`, so
   ``get_online_features`` serves them unchanged);
3. write the accepted events to the Parquet log (a file named by the batch's first
   entry: a batch processed again replaces it);
4. ``MULTI``: the new states, the online records, the HyperLogLog additions, the
   dead letters (``<stream>:dead``) and the source's acknowledgement (``XACK``) —
   ``EXEC``. Either all of it happens or none.

A consumer killed anywhere before ``EXEC`` leaves its entries pending and changes
nothing; its next life (or, after ``claim_idle``, another consumer) applies them
again from the same state: no loss, no double count. Two consumers that touch
entities of one stripe at once conflict on its ``WATCH`` and the later one redoes its batch.
Distinct counts are computed on a scratch key (the window's buckets merged, the
batch's values added), so the real HyperLogLogs change only inside ``EXEC``.

Needs Redis 6.2 or later (``XAUTOCLAIM``, ``SET ... PXAT``) and one Redis for the
whole view (its transaction spans keys of many entities: not a Redis Cluster).
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import redis

from mlplat.errors import StreamError, one_line
from mlplat.features.online import RecordCodec, RedisOnlineStore, record_newest
from mlplat.features.registry import BrokenView, Registry
from mlplat.services import beat
from mlplat.streaming.definitions import StreamFeatureView, duration_ns, stream_view
from mlplat.streaming.events import DeadLetter, Entry, Events, _as_dict, decode
from mlplat.streaming.log import EventLog
from mlplat.streaming.scripts import distinct_counts, script
from mlplat.streaming.sources import KafkaSource, RedisStreamSource, Source
from mlplat.streaming.state import Ring
from mlplat.streaming.windows import NEVER, Plan

log = logging.getLogger(__name__)
DEAD_LETTERS_KEPT = 100_000
DEAD_FIELD_KEPT = 65_536  # bytes of each field a dead letter keeps (the rest is cut, and said to be)
RETRY_AFTER = (1.0, 30.0)  # seconds before a view whose batch failed is tried again: first, and at most
ERRORS_KEPT_S = 600  # an error record not refreshed for this long (its consumer stopped) disappears


def group_name(view: StreamFeatureView) -> str:
    """The consumer group of a view version on its stream."""
    return f"mlplat:{view.name}:v{view.version}"


def dead_letter_stream(view: StreamFeatureView, prefix: str) -> str:
    """The Redis stream of a view's dead letters: ``<stream>:dead`` (Kafka views: ``<prefix>:events:<view>:dead``)."""
    return f"{prefix}:events:{view.name}:dead" if view.kafka else f"{view.stream_key(prefix)}:dead"


def state_base(view: StreamFeatureView, prefix: str) -> str:
    """Prefix of a view's state keys; the schema fingerprint changes with the windows, so old state is never misread."""
    return f"{prefix}:stream:{view.name}:{view.schema_fingerprint()}"


@dataclass(frozen=True)
class BatchResult:
    """What applying one batch did."""

    view: str
    entries: int
    applied: int
    late: int
    dead: int  # dead-lettered, the late ones included
    entities: int
    attempts: int


class ViewConsumer:
    """Applies batches of one source to one stream view."""

    def __init__(self, client: redis.Redis, online: RedisOnlineStore, events_log: EventLog,
                 view: StreamFeatureView, source: Source, prefix: str, max_clock_skew: timedelta = timedelta(minutes=5)):
        self.client, self.online, self.log, self.view, self.source = client, online, events_log, view, source
        self.skew_ns = duration_ns(max_clock_skew)  # events dated later than now + this are "future"
        self.plan = Plan(view)
        self.codec = RecordCodec(view)
        self.base = state_base(view, prefix)
        self.dead_stream = dead_letter_stream(view, prefix)
        self.watermark_ns = duration_ns(view.watermark)
        longest = max(spec.k for spec in self.plan.windows) * self.plan.g
        # State idle (in wall time) for twice what any window and the watermark can reach back is dropped.
        self.state_ttl_ms = max(2 * (longest + self.watermark_ns) // 1_000_000, 60_000)
        self.ttl_ns = None if view.ttl is None else duration_ns(view.ttl)
        self.scratch = f"{self.base}:scratch:{uuid.uuid4().hex[:12]}"

    def poll(self, count: int, block_ms: int | None = None) -> BatchResult | None:
        """Read and apply one batch; None when the source had nothing."""
        entries = self.source.read(count, block_ms)
        if not entries:
            return None
        try:
            return self.apply(entries)
        except Exception:
            getattr(self.source, "failed", lambda: None)()
            raise

    def apply(self, entries: list[Entry]) -> BatchResult:
        """Apply a batch exactly once, retrying when another consumer changed one of its entities meanwhile."""
        ids = [i for i, _ in entries]  # as the source gave them: XACK takes bytes
        decoded = decode(self.view, self.plan.columns, entries, time.time_ns() + self.skew_ns)
        self._logged: list[str] = []
        for attempt in range(1, 101):
            try:
                result = self._attempt(entries, ids, decoded, attempt)
            except redis.WatchError:
                time.sleep(random.random() * min(0.001 * 2 ** attempt, 0.05))
                continue
            self.source.committed(ids)
            return result
        raise StreamError(f"Stream view {self.view.name!r}: a batch conflicted with other consumers 100 times; "
                          "run fewer consumers or smaller batches (--batch).")

    def _attempt(self, entries: list[Entry], ids: list[str], decoded: tuple[Events, list[DeadLetter]],
                 attempt: int) -> BatchResult:
        with self.client.pipeline(transaction=True) as pipe:
            events, dead = _unapplied(self.source.prepare(pipe, entries), entries, *decoded)
            codes, entities = events.codes, events.entities
            stripes = [f"{self.base}:v:{i}" for i in np.unique(_stripe(entities)).tolist()]
            if stripes:
                pipe.watch(*stripes)  # every state write bumps its stripe: a concurrent one makes EXEC fail
            ring = Ring(self.plan, pipe.mget([f"{self.base}:s:{e}" for e in entities]) if len(entities) else [])
            late = self._late(codes, events.ts, ring.latest)
            if late.any():
                fields = {_text(i): _as_dict(f) for i, f in entries}
                dead = dead + [DeadLetter(events.ids[i], fields[events.ids[i]], "late", self._late_detail(events, i))
                               for i in np.flatnonzero(late).tolist()]
            accepted = np.flatnonzero(~late)
            np.maximum.at(ring.latest, codes[accepted], events.ts[accepted])
            ref = self.plan.bucket(ring.latest)
            bucket = self.plan.bucket(events.ts[accepted])
            live = bucket >= ref[codes[accepted]] - self.plan.slots + 1  # older buckets no window reaches any more
            kept = accepted[live]
            ring.apply(codes[kept], bucket[live], events.ts[kept], events.order_a[kept], events.order_b[kept],
                       events.values[kept])
            touched = np.unique(codes[kept])
            hll = self._hll_additions(events, codes, kept, bucket[live])
            distinct = self._distinct_counts(hll, touched, ref, entities)
            values = self.plan.fold(ref[touched], lambda b: ring.gather(b, touched), distinct)
            records = self.codec.encode(_features(self.view, values), self.plan.bucket_end(ref[touched]),
                                        np.full(len(touched), time.time_ns(), np.int64))
            logged = self.log.write(self.view, _file_name(_text(ids[0])), events.take(accepted) if late.any() else events)
            self.log.remove([path for path in self._logged if path not in logged])  # an earlier try's files
            self._logged = logged
            pipe.multi()
            self._queue_writes(pipe, entities, touched, ring, records, ref, hll)
            if len(accepted):
                record_newest(pipe, self.online.prefix, self.view.name, events.ts[accepted].max())
            for letter in dead:
                pipe.xadd(self.dead_stream, _dead_fields(letter), maxlen=DEAD_LETTERS_KEPT, approximate=True)
            if stripes:
                script(self.client, "incr_many")(keys=stripes, client=pipe)
            self.source.ack(pipe, ids)
            pipe.execute()
        n_late = int(late.sum())
        return BatchResult(self.view.name, len(entries), len(accepted), n_late, len(dead), len(touched), attempt)

    def _late(self, codes: np.ndarray, ts: np.ndarray, latest: np.ndarray) -> np.ndarray:
        """Events older than their entity's latest event so far (in stream order) minus the watermark."""
        if not len(ts):
            return np.zeros(0, bool)
        order = np.argsort(codes, kind="stable")
        c, t = codes[order], ts[order]
        running = pd.Series(t).groupby(c).cummax().to_numpy()
        before = np.r_[NEVER, running[:-1]]
        before[np.r_[True, c[1:] != c[:-1]]] = NEVER
        before = np.maximum(before, latest[c])
        late = np.zeros(len(ts), bool)
        late[order] = (before != NEVER) & (t < np.where(before == NEVER, 0, before) - self.watermark_ns)
        return late

    def _late_detail(self, events: Events, i: int) -> str:
        ts = pd.Timestamp(int(events.ts[i]), tz="UTC")
        return (f"event time {ts.isoformat()} is more than the watermark ({self.view.watermark}) older than the "
                f"latest event of {events.keys[i]!r}")

    def _hll_additions(self, events: Events, codes: np.ndarray, kept: np.ndarray, buckets: np.ndarray,
                       ) -> dict[str, dict[tuple[int, int], list[str]]]:
        """Per distinct-counted column: (entity code, bucket) -> the batch's values."""
        additions: dict[str, dict[tuple[int, int], list[str]]] = {}
        for column in self.plan.distinct:
            texts = events.texts[column]
            groups: dict[tuple[int, int], list[str]] = {}
            for row, code, b in zip(kept.tolist(), codes[kept].tolist(), buckets.tolist()):
                groups.setdefault((code, b), []).append(texts[row])
            additions[column] = groups
        return additions

    def _hll_key(self, column: str, entity: str, bucket: int) -> str:
        return f"{self.base}:h:{column}:{entity}:{bucket}"

    def _distinct_counts(self, hll: dict, touched: np.ndarray, ref: np.ndarray, entities: Any) -> dict:
        """HyperLogLog counts over each window, the batch's values included, without touching the real keys."""
        if not self.plan.distinct or not len(touched):
            return {}
        out = {}
        for column in self.plan.distinct:
            for spec in self.plan.windows:
                lo, hi = spec.bounds(ref[touched])
                windows = []
                for code, first, last in zip(touched.tolist(), lo.tolist(), hi.tolist()):
                    entity = entities[code]
                    keys = [self._hll_key(column, entity, b) for b in range(first, last + 1)]
                    windows.append((keys, [v for b in range(first, last + 1) for v in hll[column].get((code, b), ())]))
                out[(column, spec)] = distinct_counts(self.client, self.scratch, windows)
        return out

    def _queue_writes(self, pipe: Any, entities: Any, touched: np.ndarray, ring: Ring, records: list[bytes],
                      ref: np.ndarray, hll: dict) -> None:
        rows = touched.tolist()
        if rows:
            script(self.client, "set_many")(keys=[f"{self.base}:s:{entities[c]}" for c in rows],
                                             args=[self.state_ttl_ms, *ring.pack(touched)], client=pipe)
            prefix = self.online.key_prefix(self.view)
            now_ms = time.time_ns() // 1_000_000
            args: list = []
            for record, end in zip(records, self.plan.bucket_end(ref[touched]).tolist()):
                expire = 0 if self.ttl_ns is None else (end + self.ttl_ns) // 1_000_000
                args += [record, expire if expire == 0 or expire > now_ms else -1]  # -1: past its ttl, delete
            script(self.client, "set_records")(keys=[prefix + entities[c] for c in rows], args=args, client=pipe)
        for column, groups in hll.items():
            keys, args = [], [self.state_ttl_ms]
            for (code, b), values in groups.items():
                keys.append(self._hll_key(column, entities[code], b))
                args += [len(values), *values]
            if keys:
                script(self.client, "pfadd_many")(keys=keys, args=args, client=pipe)


STRIPES = 256  # version keys a view's entities are hashed to; a batch WATCHes only those of its entities


def _unapplied(fresh: list[Entry], entries: list[Entry], events: Events, dead: list[DeadLetter],
               ) -> tuple[Events, list[DeadLetter]]:
    """The decoded events and dead letters of the entries a source says are not applied yet."""
    if fresh is entries or len(fresh) == len(entries):
        return events, dead
    wanted = {_text(i) for i, _ in fresh}
    rows = np.array([i for i, entry_id in enumerate(events.ids) if entry_id in wanted], np.int64)
    return events.take(rows), [d for d in dead if d.entry_id in wanted]


def _drop_old_groups(client: redis.Redis, view: StreamFeatureView, prefix: str) -> None:
    """Remove the consumer groups of the view's older versions: nothing reads them, and the stream is trimmed
    only up to what every group has applied."""
    stream, own = view.stream_key(prefix), f"mlplat:{view.name}:v"
    for group in client.xinfo_groups(stream):
        name = _text(group["name"])
        if name.startswith(own) and name.removeprefix(own).isdigit() and int(name.removeprefix(own)) < view.version:
            client.xgroup_destroy(stream, name)
            log.info("stream %s: removed group %s of an older version of %s", stream, name, view.name)


def _stripe(entities: list[str]) -> np.ndarray:
    """The stripe of each entity key: a stable hash (never Python's salted ``hash``)."""
    if not entities:
        return np.zeros(0, np.int64)
    keys = np.asarray(entities, dtype=object)  # distinct already: categorizing first only costs time
    return (pd.util.hash_array(keys, categorize=False) % STRIPES).astype(np.int64)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _file_name(entry_id: str) -> str:
    return entry_id.replace("/", "_").replace("-", "_")


def _dead_fields(letter: DeadLetter) -> dict[bytes, bytes]:
    """The fields as sent (names and values as they came, each cut to DEAD_FIELD_KEPT bytes), then why."""
    fields = {_stored(k): _stored(v) for k, v in (letter.fields or {}).items() if v is not None}
    why = {"_reason": letter.reason, "_detail": letter.detail, "_entry": letter.entry_id}
    return {**fields, **{name.encode(): _stored(text) for name, text in why.items()}}


def _stored(value: Any) -> bytes:
    """``value`` as bytes Redis takes: text that is not valid UTF-8 (a lone surrogate) escaped, a huge value cut."""
    data = value if isinstance(value, bytes) else str(value).encode(errors="backslashreplace")
    if len(data) <= DEAD_FIELD_KEPT:
        return data
    return data[:DEAD_FIELD_KEPT] + f"... (cut: {len(data):,} bytes sent)".encode()


def _features(view: StreamFeatureView, values: dict[str, np.ndarray]) -> pa.Table:
    columns = []
    for field in view.schema:
        data = values[field.name]
        if field.dtype == "int64":
            columns.append(pa.array(np.asarray(data, np.int64)))
        else:
            data = np.asarray(data, np.float64)
            columns.append(pa.array(data, mask=np.isnan(data)))
    return pa.Table.from_arrays(columns, names=view.feature_names)


@dataclass(frozen=True)
class ViewFailure:
    """Why a view's last batch (or its set-up) failed; its entries stay pending and it is tried again later."""

    view: str
    error: str  # one line: "OSError: [Errno 28] No space left on device"
    since: float  # time.time() of the first failure in a row
    attempts: int
    retry_at: float  # time.monotonic() of the next try
    exception: BaseException | None = None


_FAILED = object()  # what a guarded call of a view that failed returns


def errors_key(prefix: str) -> str:
    """The Redis hash where consumers publish their views' failures (field ``<view>\x1f<consumer>``, a JSON value)."""
    return f"{prefix}:stream:errors"


class Consumer:
    """``mlplat stream``: keeps every stream view (or the ``views`` named) fresh from its stream.

    Each view's stream is read through the consumer group of its version, so any
    number of consumers (on one machine or several, each with its own ``name``)
    share the work; a consumer's name should stay the same across restarts, so it
    finds the entries it left pending. New stream views are picked up within
    ``refresh`` seconds.

    A view whose batch fails (or whose definition cannot be read) fails alone: the
    others go on, its entries stay pending and it is tried again with back-off. Its
    failure is in ``failures``, published for ``p.streams.errors()`` and logged once
    per distinct error.
    """

    def __init__(self, registry: Registry, online: RedisOnlineStore, events_log: EventLog, *,
                 max_clock_skew: timedelta = timedelta(minutes=5), views: list[str] | None = None, batch: int = 20_000,
                 name: str | None = None, claim_idle: float = 60.0, refresh: float = 5.0):
        if batch < 1:
            raise StreamError(f"batch={batch}: read at least one entry at a time.")
        self.registry, self.online, self.log = registry, online, events_log
        self.max_clock_skew = max_clock_skew  # events dated later than now + this are dead-lettered as "future"
        self.names, self.batch = list(views) if views else None, batch
        self.name = name or socket.gethostname()
        self.claim_idle, self.refresh_every = claim_idle, refresh
        self.workers: dict[str, ViewConsumer] = {}
        self.failures: dict[str, ViewFailure] = {}
        self._next_refresh = 0.0

    def refresh(self) -> None:
        """Start consuming new stream views (and new versions); stop on views that are gone or cannot be read."""
        views = self.registry.list_views()
        if self.names is not None:  # an unknown name or a batch view fails here
            listed = {v.name: v for v in views}
            views = [listed[n] if isinstance(listed.get(n), BrokenView) else stream_view(self.registry, n)
                     for n in self.names]
        running = {w.view.name for w in self.workers.values()}
        for broken in (v for v in views if isinstance(v, BrokenView)):
            if self.names is not None or broken.name in running:  # ours: say so; its entries wait for a fix
                self._failed(broken.name, broken.refusal())
        wanted = {f"{v.name}:v{v.version}": v for v in views if isinstance(v, StreamFeatureView)}
        for key in set(self.workers) - set(wanted):
            self.workers.pop(key).source.close()
        for key, view in wanted.items():
            old = self.workers.pop(key, None)
            worker = self._guarded(view.name, lambda view=view, old=old: self._worker(view, old))
            if worker is not _FAILED:  # else tried again at the next refresh
                self.workers[key] = worker
        self._next_refresh = time.monotonic() + self.refresh_every

    def _worker(self, view: StreamFeatureView, old: ViewConsumer | None) -> ViewConsumer:
        """The consumer of ``view``: ``old`` (of the same view version) while its definition is unchanged."""
        prefix, skew = self.online.prefix, self.max_clock_skew
        if old is not None and old.view == view:
            return old
        if old is not None and old.view.stream == view.stream:  # changed in place: watermark, ttl, ...
            return ViewConsumer(old.client, old.online, old.log, view, old.source, prefix, skew)
        if old is not None:  # another stream: read it from the start
            old.source.close()
        client = self.online.client
        if view.kafka:
            servers, topic, settings = view.kafka
            source = KafkaSource(client, f"{state_base(view, prefix)}:kafka", topic, group_name(view),
                                 {"bootstrap.servers": servers, "client.id": self.name, **settings})
        else:
            source = RedisStreamSource(client, view.stream_key(prefix), group_name(view), self.name, self.claim_idle)
            _drop_old_groups(client, view, prefix)
        return ViewConsumer(client, self.online, self.log, view, source, prefix, skew)

    def run_once(self, block_ms: int | None = None) -> list[BatchResult]:
        """One batch from each view that has entries; wait up to ``block_ms`` when none has any."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        now = time.monotonic()
        due = [w for w in self.workers.values()
               if w.view.name not in self.failures or self.failures[w.view.name].retry_at <= now]
        if len(due) == 1 and len(self.workers) == 1:
            done = self._poll(due[0], block_ms)
            return [done] if done else []
        results = [r for r in (self._poll(w) for w in due) if r]
        if not results and block_ms:
            if due:
                done = self._poll(due[0], min(block_ms, 50))
                results = [done] if done else []
            else:  # nothing to consume, or every view waits to be tried again
                time.sleep((min(block_ms, 50) if self.workers else block_ms) / 1000)
        return results

    def _poll(self, worker: ViewConsumer, block_ms: int | None = None) -> BatchResult | None:
        name = worker.view.name
        result = self._guarded(name, lambda: worker.poll(self.batch, block_ms))
        if result is _FAILED:
            return None
        if name in self.failures:  # it read (and applied) again
            self._recovered(name)
        return result

    def _guarded(self, view: str, call: Any) -> Any:
        """``call()`` for ``view``, or ``_FAILED`` when it raised: recorded as that view's failure, so no view stops
        the others. Redis unreachable is everyone's problem: that is raised (``serve`` waits for it)."""
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:  # the view's own: a bad definition, a full disk, a stream key of another type
            self._failed(view, exc)
            return _FAILED

    def _failed(self, view: str, exc: BaseException) -> None:
        old = self.failures.get(view)
        error = one_line(exc)
        attempts = old.attempts + 1 if old else 1
        if old is None or old.error != error:  # once per distinct error, not once a second
            log.error("stream %s: %s; its entries stay pending, and it is tried again with back-off", view, error,
                      exc_info=exc)
        delay = min(RETRY_AFTER[0] * 2 ** min(attempts - 1, 16), RETRY_AFTER[1])
        self.failures[view] = ViewFailure(view, error, old.since if old else time.time(), attempts,
                                          time.monotonic() + delay, exc)
        self._publish(view, {"error": error, "since": self.failures[view].since, "last": time.time(),
                             "attempts": attempts})

    def _recovered(self, view: str) -> None:
        failure = self.failures.pop(view)
        log.info("stream %s: consuming again after %d failed attempt(s)", view, failure.attempts)
        self._publish(view, None)

    def _publish(self, view: str, record: dict[str, Any] | None) -> None:
        """Show (or, with None, clear) this consumer's failure of ``view`` to ``p.streams.errors()``."""
        key, field = errors_key(self.online.prefix), f"{view}\x1f{self.name}"
        try:
            client = self.online.client
            if record is None:
                client.hdel(key, field)
            else:
                client.hset(key, field, json.dumps(record))
        except redis.RedisError:  # Redis may be what fails; the log and ``failures`` still say it
            pass

    def report(self) -> str:
        """The views this consumer cannot apply now, and why (``mlplat status`` shows it); empty when all apply."""
        return "; ".join(f"view {view} fails: {failure.error}" for view, failure in sorted(self.failures.items()))

    def drain(self) -> list[BatchResult]:
        """Apply batches until every stream is caught up; return what each batch did. A view that failed is
        raised at the end (its entries stay pending), once the others are done."""
        self.refresh()
        results: list[BatchResult] = []
        while batch := self.run_once():
            results += batch
        for failure in self.failures.values():
            raise failure.exception if isinstance(failure.exception, StreamError) else StreamError(
                f"Stream view {failure.view!r} could not be consumed: {failure.error}. Its entries stay in the "
                "stream; fix the cause and process again.") from failure.exception
        return results

    def close(self) -> None:
        """Close the sources (a Kafka consumer leaves its group)."""
        for worker in self.workers.values():
            worker.source.close()
        self.workers.clear()

    def serve(self, stop: threading.Event, heartbeat: Path | None = None, block_ms: int = 1000) -> None:
        """Consume until ``stop`` is set, touching ``heartbeat`` (at most once a second) after each round that
        applied its batches or found nothing to do: its age is how long the consumer has made no progress."""
        touched, last_error = 0.0, None
        while not stop.is_set():
            try:
                for result in self.run_once(block_ms):
                    if result.dead:
                        log.warning("stream %s: %d of %d entries dead-lettered (%d late)", result.view, result.dead,
                                    result.entries, result.late)
                last_error = None
            except Exception as exc:  # Redis or the registry unreachable: every view waits; logged once per error
                if one_line(exc) != last_error:
                    last_error = one_line(exc)
                    log.warning("stream consumer: %s; retrying every second", last_error,
                                exc_info=not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)))
                stop.wait(1)
                continue
            if heartbeat is not None and time.monotonic() - touched >= 1:
                beat(heartbeat, self.report())
                touched = time.monotonic()
