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

import logging
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import redis

from mlplat.errors import StreamError
from mlplat.features.online import RecordCodec, RedisOnlineStore, record_newest
from mlplat.streaming.definitions import StreamFeatureView, duration_ns
from mlplat.streaming.events import DeadLetter, Entry, Events, _as_dict, decode
from mlplat.streaming.log import EventLog
from mlplat.streaming.sources import KafkaSource, RedisStreamSource, Source
from mlplat.streaming.state import Ring
from mlplat.streaming.windows import NEVER, Plan

log = logging.getLogger(__name__)
DEAD_LETTERS_KEPT = 100_000


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
                 view: StreamFeatureView, source: Source, prefix: str):
        self.client, self.online, self.log, self.view, self.source = client, online, events_log, view, source
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
        decoded = decode(self.view, self.plan.columns, entries)
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
                _script(self.client, "incr_many")(keys=stripes, client=pipe)
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
            _script(self.client, "set_many")(keys=[f"{self.base}:s:{entities[c]}" for c in rows],
                                             args=[self.state_ttl_ms, *ring.pack(touched)], client=pipe)
            prefix = self.online.key_prefix(self.view)
            now_ms = time.time_ns() // 1_000_000
            args: list = []
            for record, end in zip(records, self.plan.bucket_end(ref[touched]).tolist()):
                expire = 0 if self.ttl_ns is None else (end + self.ttl_ns) // 1_000_000
                args += [record, expire if expire == 0 or expire > now_ms else -1]  # -1: past its ttl, delete
            _script(self.client, "set_records")(keys=[prefix + entities[c] for c in rows], args=args, client=pipe)
        for column, groups in hll.items():
            keys, args = [], [self.state_ttl_ms]
            for (code, b), values in groups.items():
                keys.append(self._hll_key(column, entities[code], b))
                args += [len(values), *values]
            if keys:
                _script(self.client, "pfadd_many")(keys=keys, args=args, client=pipe)


STRIPES = 256  # version keys a view's entities are hashed to; a batch WATCHes only those of its entities
_LUA = {
    # state blobs: SET key blob PX ttl
    "set_many": """
        for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]) end
        return #KEYS""",
    # online records: SET key record [PXAT at]; at 0: no expiry, -1: already expired, delete
    "set_records": """
        for i = 1, #KEYS do
            local at = ARGV[2 * i]
            if at == '0' then redis.call('SET', KEYS[i], ARGV[2 * i - 1])
            elseif at == '-1' then redis.call('DEL', KEYS[i])
            else redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'PXAT', at) end
        end
        return #KEYS""",
    "incr_many": """
        for i = 1, #KEYS do redis.call('INCR', KEYS[i]) end
        return #KEYS""",
    # HyperLogLogs: ARGV = ttl, then per key: n, n values
    "pfadd_many": """
        local at = 2
        for i = 1, #KEYS do
            local n = tonumber(ARGV[at])
            for j = at + 1, at + n, 4000 do redis.call('PFADD', KEYS[i], unpack(ARGV, j, math.min(j + 3999, at + n))) end
            redis.call('PEXPIRE', KEYS[i], ARGV[1])
            at = at + n + 1
        end
        return #KEYS""",
    # distinct counts: ARGV = scratch key, then per window: n keys, keys, m values, values -> PFCOUNT of the union
    "pfcount_windows": """
        local scratch, out, at = ARGV[1], {}, 2
        while at <= #ARGV do
            local n = tonumber(ARGV[at])
            redis.call('DEL', scratch)
            redis.call('PFMERGE', scratch, unpack(ARGV, at + 1, at + n))
            at = at + n + 1
            local m = tonumber(ARGV[at])
            for j = at + 1, at + m, 4000 do redis.call('PFADD', scratch, unpack(ARGV, j, math.min(j + 3999, at + m))) end
            at = at + m + 1
            out[#out + 1] = redis.call('PFCOUNT', scratch)
        end
        redis.call('DEL', scratch)
        return out""",
}


def _script(client: redis.Redis, name: str) -> Any:
    scripts = client.__dict__.setdefault("_mlplat_scripts", {})
    if name not in scripts:
        scripts[name] = client.register_script(_LUA[name])
    return scripts[name]


def distinct_counts(client: redis.Redis, scratch: str, windows: list[tuple[list[str], list[str]]]) -> np.ndarray:
    """For each (HyperLogLog keys, extra values): the estimated distinct count of their union, in Redis.

    The stream and the backfill both count this way, so they agree exactly.
    """
    counts: list[int] = []
    args: list = [scratch]
    for keys, values in windows:
        args += [len(keys), *keys, len(values), *values]
        if len(args) > 50_000:
            counts += _script(client, "pfcount_windows")(args=args)
            args = [scratch]
    if len(args) > 1:
        counts += _script(client, "pfcount_windows")(args=args)
    return np.array(counts, np.int64)


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


def _dead_fields(letter: DeadLetter) -> dict:
    fields = {_text(k): v for k, v in (letter.fields or {}).items() if v is not None}
    return {**fields, "_reason": letter.reason, "_detail": letter.detail, "_entry": letter.entry_id}


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


class Consumer:
    """``mlplat stream``: keeps every stream view (or the ``views`` named) fresh from its stream.

    Each view's stream is read through the consumer group of its version, so any
    number of consumers (on one machine or several, each with its own ``name``)
    share the work; a consumer's name should stay the same across restarts, so it
    finds the entries it left pending. New stream views are picked up within
    ``refresh`` seconds.
    """

    def __init__(self, platform: Any, views: list[str] | None = None, batch: int = 20_000, name: str | None = None,
                 claim_idle: float = 60.0, refresh: float = 5.0):
        if batch < 1:
            raise StreamError(f"batch={batch}: read at least one entry at a time.")
        self.platform, self.names, self.batch = platform, list(views) if views else None, batch
        self.name = name or socket.gethostname()
        self.claim_idle, self.refresh_every = claim_idle, refresh
        self.workers: dict[str, ViewConsumer] = {}
        self._next_refresh = 0.0
        self._log: EventLog | None = None

    def refresh(self) -> None:
        """Start consuming new stream views (and new versions); stop on views that are gone."""
        from mlplat.streaming.streams import stream_view

        store = self.platform.features
        if self.names is None:
            views = [v for v in store.list_views() if isinstance(v, StreamFeatureView)]
        else:
            views = [stream_view(store, name) for name in self.names]
        if self._log is None:
            self._log = EventLog(self.platform.settings.offline_store)
        prefix = self.platform.settings.online_prefix
        wanted = {f"{v.name}:v{v.version}": v for v in views}
        for key in set(self.workers) - set(wanted):
            self.workers.pop(key).source.close()
        for key, view in wanted.items():
            if key in self.workers and self.workers[key].view != view:  # changed in place: watermark, ttl, ...
                old = self.workers.pop(key)
                if old.view.stream == view.stream:
                    self.workers[key] = ViewConsumer(old.client, old.online, old.log, view, old.source, prefix)
                else:  # another stream: read it from the start
                    old.source.close()
            if key not in self.workers:
                client = store.online.client
                if view.kafka:
                    servers, topic, settings = view.kafka
                    source = KafkaSource(client, f"{state_base(view, prefix)}:kafka", topic, group_name(view),
                                         {"bootstrap.servers": servers, "client.id": self.name, **settings})
                else:
                    source = RedisStreamSource(client, view.stream_key(prefix), group_name(view), self.name,
                                               self.claim_idle)
                    _drop_old_groups(client, view, prefix)
                self.workers[key] = ViewConsumer(client, store.online, self._log, view, source, prefix)
        self._next_refresh = time.monotonic() + self.refresh_every

    def run_once(self, block_ms: int | None = None) -> list[BatchResult]:
        """One batch from each view that has entries; wait up to ``block_ms`` when none has any."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        workers = list(self.workers.values())
        if len(workers) == 1:
            done = workers[0].poll(self.batch, block_ms)
            return [done] if done else []
        results = [r for r in (w.poll(self.batch) for w in workers) if r]
        if not results and workers and block_ms:
            done = workers[0].poll(self.batch, min(block_ms, 50))
            results = [done] if done else []
        elif not workers and block_ms:
            time.sleep(block_ms / 1000)
        return results

    def drain(self) -> list[BatchResult]:
        """Apply batches until every stream is caught up; return what each batch did."""
        self.refresh()
        results: list[BatchResult] = []
        while batch := self.run_once():
            results += batch
        return results

    def close(self) -> None:
        """Close the sources (a Kafka consumer leaves its group)."""
        for worker in self.workers.values():
            worker.source.close()
        self.workers.clear()

    def serve(self, stop: threading.Event, heartbeat: Path | None = None, block_ms: int = 1000) -> None:
        """Consume until ``stop`` is set, touching ``heartbeat`` (at most once a second) after each round that
        applied its batches or found nothing to do: its age is how long the consumer has made no progress."""
        touched = 0.0
        while not stop.is_set():
            try:
                for result in self.run_once(block_ms):
                    if result.dead:
                        log.warning("stream %s: %d of %d entries dead-lettered (%d late)", result.view, result.dead,
                                    result.entries, result.late)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("stream consumer: %s; retrying", exc)
                stop.wait(1)
                continue
            except Exception:  # one bad batch or view must not stop the others; its entries stay pending
                log.exception("stream consumer: a batch failed; retrying in 1 s")
                stop.wait(1)
                continue
            if heartbeat is not None and time.monotonic() - touched >= 1:
                heartbeat.touch()
                touched = time.monotonic()
