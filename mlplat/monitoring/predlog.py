"""The prediction log: every (sampled) request to a Redis stream, flushed to Parquet in the background.

The request path only appends to an in-process buffer; a daemon thread sends the
buffer to Redis every ``interval`` seconds in one pipeline (``XADD`` per request,
plus the latency and error counters behind the Prometheus metrics). The flusher
(``mlplat monitor serve``, started by ``mlplat up``) reads the stream through a
consumer group, writes one Parquet file per batch, model and day::

    <offline store>/_predictions/<model>/date=YYYY-MM-DD/<first entry id>.parquet

and only then acknowledges and deletes the entries. What a crash can lose:

- the flusher: nothing. Unacknowledged entries are read again on restart and
  rewritten to the same file name; rows carry their ``log_id`` and readers drop
  repeats, so nothing is counted twice;
- a predicting process: what its buffer held, at most ``interval`` (50 ms) of requests;
- Redis: what its append-only file had not synced, at most one second;
- a flusher that stays down: the stream keeps the newest ``max_len`` requests
  (default one million) and trims older ones.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis

from mlplat.clock import SYSTEM_CLOCK, Clock
from mlplat.errors import InvalidArgument

log = logging.getLogger(__name__)

GROUP = "flusher"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


def stream_key(prefix: str) -> str:
    """The Redis stream of logged predictions."""
    return f"{prefix}:predictions"


def metrics_key(prefix: str, model: str, version: str) -> str:
    """The Redis hash of one model version's request counters: ``b<i>`` per latency bucket, sum, count, errors,
    and ``error:<class>`` per class of error."""
    return f"{prefix}:metrics:{model}:{version}"


def metrics_index(prefix: str) -> str:
    """The set of ``model\\tversion`` pairs that have counters."""
    return f"{prefix}:metrics"


MISSING_ROWS = ""  # in a missing-feature count: the rows that lacked any feature
MISSING_FIELD = "missing:"  # + feature reference: a field of the metrics hash
ERROR_FIELD = "error:"  # + the class of a failed call's error: a field of the metrics hash


def count_missing(pipe: Any, prefix: str, model: str, version: str, counts: dict[str, int]) -> None:
    """Queue on a Redis pipeline: rows lacking features (``MISSING_ROWS``) and rows lacking each feature.

    Served rows that lacked features are counted here by ``p.predict`` and by Triton's ``<model>_by_id``
    alike, in the version's metrics hash (``missing:`` for the rows, ``missing:<feature>`` per feature).
    """
    pipe.sadd(metrics_index(prefix), f"{model}\t{version}")
    for feature, count in counts.items():
        pipe.hincrby(metrics_key(prefix, model, version), MISSING_FIELD + feature, count)


def _missing_counts(served: Iterable[tuple]) -> dict[tuple[str, str], dict[str, int]]:
    """(model, version) -> feature (or ``MISSING_ROWS``) -> rows, from queued (model, version, features, gaps)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for model, version, features, gaps in served:
        found = counts.setdefault((model, version), {})
        for feature, count in ((MISSING_ROWS, int(gaps.any(axis=1).sum())),
                               *zip(features, gaps.sum(axis=0).tolist())):
            if count:
                found[feature] = found.get(feature, 0) + count
    return counts


def dropped_key(prefix: str) -> str:
    """The count of requests that were never logged (buffer full, Redis away)."""
    return f"{prefix}:metrics:dropped"


class PredictionLogger:
    """Buffers predictions and counters in memory; a daemon thread ships them to Redis.

    ``sample_rate`` is the share of requests whose rows are logged (counters see
    every request). The buffer holds ``buffer`` requests; when Redis is slower than
    the traffic the oldest are dropped and counted, never waited for.
    """

    def __init__(self, client: redis.Redis, prefix: str, sample_rate: float = 1.0, max_len: int = 1_000_000,
                 buffer: int = 100_000, interval: float = 0.05, clock: Clock = SYSTEM_CLOCK):
        if not 0 <= sample_rate <= 1:
            raise InvalidArgument(f"sample_rate={sample_rate} must be between 0 and 1.")
        self.client, self.prefix = client, prefix
        self.sample_rate, self.max_len, self.interval, self.clock = sample_rate, max_len, interval, clock
        self._requests: deque[tuple] = deque(maxlen=buffer)
        self._counters: dict[tuple[str, str], list[float]] = {}
        self._errors: Counter[tuple[str, str, str]] = Counter()  # (model, version, error class) -> failed calls
        self._gaps: deque[tuple] = deque(maxlen=buffer)  # (model, version, features, gaps) of served requests
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="mlplat-prediction-log", daemon=True)
        self._thread.start()

    def log(self, model: str, version: str, columns: list[str], features: np.ndarray, outputs: np.ndarray,
            latency_ms: float, arm: str = "") -> None:
        """Count one served request and, if sampled, queue its rows. Never blocks on Redis."""
        self._count(model, version, latency_ms / 1000)
        if self.sample_rate < 1 and random.random() >= self.sample_rate:
            return
        if len(self._requests) == self._requests.maxlen:
            self.dropped += 1
        self._requests.append((model, version, arm, self.clock.time(), latency_ms, columns, features, outputs))

    def error(self, model: str, version: str, error: str = "ServingError") -> None:
        """Count a failed request, by the class of its error."""
        with self._lock:
            self._errors[model, version, error] += 1

    def missing(self, model: str, version: str, features: list[str], gaps: np.ndarray) -> None:
        """Count the served rows that lacked features (``gaps``: rows x ``features``, True where one was missing).

        Queued as is and counted by the sending thread: per feature, the rows that lacked it, and the
        rows that lacked any (see :func:`count_missing`).
        """
        self._gaps.append((model, version, features, gaps))

    def _count(self, model: str, version: str, seconds: float) -> None:
        with self._lock:
            counters = self._counters.setdefault((model, version), [0.0] * (len(LATENCY_BUCKETS) + 3))
            counters[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # last slot of the buckets: +Inf
            counters[-2] += seconds
            counters[-1] += 1

    def flush(self) -> None:
        """Send what is buffered now (the thread does this every ``interval``)."""
        with self._sending:
            self._send()

    def _send(self) -> None:
        with self._lock:
            counters, self._counters = self._counters, {}
            errors, self._errors = self._errors, Counter()
            dropped, self.dropped = self.dropped, 0
        requests = [self._requests.popleft() for _ in range(len(self._requests))]
        missing = _missing_counts(self._gaps.popleft() for _ in range(len(self._gaps)))
        if not counters and not errors and not requests and not dropped and not missing:
            return
        pipe = self.client.pipeline(transaction=False)
        for (model, version), counts in missing.items():
            count_missing(pipe, self.prefix, model, version, counts)
        stream = stream_key(self.prefix)
        for model, version, arm, at, latency, columns, features, outputs in requests:
            pipe.xadd(stream, {"m": model, "v": version, "a": arm, "t": at, "l": latency, "c": json.dumps(columns),
                               "x": features.astype(np.float32).tobytes(), "y": outputs.astype(np.float32).tobytes(),
                               "n": len(features)}, maxlen=self.max_len, approximate=True)
        for (model, version), values in counters.items():
            key = metrics_key(self.prefix, model, version)
            pipe.sadd(metrics_index(self.prefix), f"{model}\t{version}")
            for i, value in enumerate(values[:len(LATENCY_BUCKETS) + 1]):
                if value:
                    pipe.hincrby(key, f"b{i}", int(value))
            pipe.hincrbyfloat(key, "sum", values[-2])
            pipe.hincrby(key, "count", int(values[-1]))
        for (model, version, error), n in errors.items():
            key = metrics_key(self.prefix, model, version)
            pipe.sadd(metrics_index(self.prefix), f"{model}\t{version}")
            pipe.hincrby(key, "errors", n)
            pipe.hincrby(key, ERROR_FIELD + error, n)
        if dropped:
            pipe.incrby(dropped_key(self.prefix), dropped)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self.dropped += dropped + len(requests)
            log.warning("prediction log: Redis unavailable (%s); %d requests not logged", exc, len(requests))

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self.flush()

    def close(self) -> None:
        """Send what is left and stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()


class PredictionStore:
    """Read and write the Parquet side of the log (under the offline store)."""

    def __init__(self, offline_url: str):
        from mlplat.features.offline import OfflineStore

        offline = OfflineStore(offline_url)
        self.fs, self.root = offline.fs, f"{offline.root}/_predictions"

    def write(self, batch_id: str, rows: pd.DataFrame) -> list[str]:
        """One file per model and day, named by the batch's first entry id: rewriting a batch replaces it."""
        written = []
        days = rows["at"].dt.strftime("%Y-%m-%d")
        for (model, day), part in rows.groupby([rows["model"], days], sort=True):
            folder = f"{self.root}/{model}/date={day}"
            self.fs.create_dir(folder, recursive=True)
            final = f"{folder}/{batch_id}.parquet"
            staged = final if not isinstance(self.fs, pafs.LocalFileSystem) else f"{folder}/.{batch_id}.tmp"
            pq.write_table(_table(part), staged, filesystem=self.fs)
            if staged != final:
                self.fs.move(staged, final)
            written.append(final)
        return written

    def read(self, model: str, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Logged rows of ``model`` with ``start <= at < end``."""
        selector = pafs.FileSelector(f"{self.root}/{model}", recursive=True, allow_not_found=True)
        first, last = (None if t is None else t.strftime("%Y-%m-%d") for t in (start, end))
        paths = []
        for info in self.fs.get_file_info(selector):
            day = info.path.rsplit("/", 2)[-2].removeprefix("date=")
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and \
                    not info.base_name.startswith(".") and (first is None or day >= first) and \
                    (last is None or day <= last):
                paths.append(info.path)
        if not paths:
            return pd.DataFrame()
        tables = [pq.read_table(path, filesystem=self.fs) for path in sorted(paths)]
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        return in_window(frame, start, end)


def _table(rows: pd.DataFrame) -> pa.Table:
    """``rows`` as Arrow, ``at`` as UTC nanoseconds (handed over as naive UTC: pandas deprecates the implicit way)."""
    at = pa.array(rows["at"].dt.tz_convert(None).to_numpy(), pa.timestamp("ns", tz="UTC"))
    return pa.Table.from_pandas(rows.drop(columns=["at"]), preserve_index=False).add_column(1, "at", at)


def in_window(frame: pd.DataFrame, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """The rows of ``frame`` with ``start <= at < end`` (either bound may be None)."""
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= (frame["at"] >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        keep &= (frame["at"] < pd.Timestamp(end)).to_numpy()
    return frame[keep]


def entries_frame(entries: Iterable[tuple[bytes, dict[bytes, bytes] | None]]) -> pd.DataFrame:
    """One row per predicted row of the entries, ``log_id`` ``<entry id>/<row>``, in stream order.

    Entries that take the same feature columns are decoded together (one ``frombuffer``
    for all their features); entries trimmed from the stream come back empty and are skipped.
    """
    groups: dict[bytes, list[tuple[int, bytes, dict[bytes, bytes]]]] = {}
    for order, (entry_id, fields) in enumerate(entries):
        if fields:
            groups.setdefault(fields[b"c"], []).append((order, entry_id, fields))
    parts = [_decode(json.loads(columns), group) for columns, group in groups.items()]
    if not parts:
        return pd.DataFrame()
    if len(parts) == 1:
        return parts[0].drop(columns="_order")
    return pd.concat(parts, ignore_index=True).sort_values("_order", kind="stable", ignore_index=True) \
        .drop(columns="_order")


def _decode(columns: list[str], group: list[tuple[int, bytes, dict[bytes, bytes]]]) -> pd.DataFrame:
    n = np.array([int(fields[b"n"]) for _, _, fields in group])
    features = np.frombuffer(b"".join(fields[b"x"] for _, _, fields in group), np.float32).reshape(-1, len(columns))
    row = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    # The prediction is the last output of each row (classifiers: the last class's score, as in the drift reference).
    width = np.array([len(fields[b"y"]) // 4 for _, _, fields in group]) // n
    starts = np.cumsum(n * width) - n * width
    last = np.repeat(starts, n) + (row + 1) * np.repeat(width, n) - 1
    outputs = np.frombuffer(b"".join(fields[b"y"] for _, _, fields in group), np.float32)[last]

    def each(key: bytes) -> np.ndarray:
        return np.repeat([fields[key].decode() for _, _, fields in group], n)

    frame = pd.DataFrame(features, columns=columns)
    frame.insert(0, "log_id", pd.Series(np.repeat([e.decode() for _, e, _ in group], n)) + "/" + row.astype(str))
    frame.insert(1, "at", pd.to_datetime(np.repeat([float(f[b"t"]) for _, _, f in group], n), unit="s", utc=True))
    frame.insert(2, "model", each(b"m"))
    frame.insert(3, "version", each(b"v"))
    frame.insert(4, "arm", each(b"a"))
    frame.insert(5, "latency_ms", np.repeat([float(f[b"l"]) for _, _, f in group], n))
    frame["prediction"] = outputs
    frame["_order"] = np.repeat([order for order, _, _ in group], n)
    return frame


class Flusher:
    """Moves logged predictions from the Redis stream to Parquet, batch by batch, acknowledging after writing."""

    def __init__(self, client: redis.Redis, prefix: str, offline_url: str, batch: int = 5000,
                 consumer: str | None = None):
        self.client, self.stream = client, stream_key(prefix)
        self.store = PredictionStore(offline_url)
        self.batch = batch
        self.consumer = consumer or socket.gethostname()  # stable: a restart finds its own pending entries
        self._create_group()

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def flush_once(self, block_ms: int | None = None) -> int:
        """Write one batch (entries left pending by an earlier life first); return the requests written."""
        pending = self.client.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch)
        entries = pending[0][1] if pending else []
        if not entries:
            fresh = self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.batch,
                                           block=block_ms)
            entries = fresh[0][1] if fresh else []
        if not entries:
            return 0
        self.write(entries)
        ids = [entry_id for entry_id, _ in entries]
        self.client.pipeline().xack(self.stream, GROUP, *ids).xdel(self.stream, *ids).execute()
        return len(entries)

    def write(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        """Write a batch of entries to Parquet, named by its first entry: writing it again replaces it."""
        rows = entries_frame(entries)
        if len(rows):
            self.store.write(entries[0][0].decode().replace("-", "_"), rows)

    def flush_all(self) -> int:
        """Flush until the stream is empty; return the requests written."""
        total = 0
        while written := self.flush_once():
            total += written
        return total

    def serve(self, stop: threading.Event, heartbeat: Path | None = None) -> None:
        """Flush until ``stop`` is set (the loop of ``mlplat monitor serve``), touching ``heartbeat`` after each
        batch written or wait with nothing to write: its age is how long the flusher has made no progress."""
        while not stop.is_set():
            try:
                self.flush_once(block_ms=1000)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._create_group()  # Redis came back without the stream (its data lost or flushed)
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("prediction log flusher: %s; retrying", exc)
                stop.wait(1)
                continue
            if heartbeat is not None:
                heartbeat.touch()


def unflushed(client: redis.Redis, prefix: str, model: str) -> pd.DataFrame:
    """Rows of ``model`` still in the stream (not yet in Parquet); reading needs no consumer group."""
    rows = entries_frame(client.xrange(stream_key(prefix)))
    return rows[rows["model"] == model] if len(rows) else rows
