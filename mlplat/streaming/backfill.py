"""The batch path: a stream view's rows computed from its logged events, as the stream computed them.

One row per (entity, bucket holding an event of it): the value of every
aggregation as of that bucket (see :mod:`mlplat.streaming.windows`), timestamped
with the bucket's end. The per-bucket partials are built the way the consumer
builds them (sums added in stream order) and folded by the same
:meth:`~mlplat.streaming.windows.Plan.fold`; distinct counts use Redis
HyperLogLogs on scratch keys, as the stream does. So an entity's latest row
equals its online value.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import redis

from mlplat.streaming.definitions import StreamFeatureView
from mlplat.streaming.log import text_column
from mlplat.streaming.scripts import distinct_counts, script
from mlplat.streaming.windows import Cells, Plan

_PIPELINE = 10_000  # commands per round trip


def compute(view: StreamFeatureView, events: pa.Table, client: redis.Redis, prefix: str,
            start_ns: int | None = None, end_ns: int | None = None) -> pd.DataFrame:
    """Rows of ``view`` for every bucket that starts in ``[start_ns, end_ns)`` from logged ``events``.

    ``events`` must reach back a window before ``start_ns`` (the events log's
    ``read`` of ``[bucket start - longest window, end)``) and be in stream order.
    """
    plan = Plan(view)
    columns = _empty_columns(view)
    if events.num_rows == 0:
        return pd.DataFrame(columns)
    key_columns = [events.column(k).to_numpy(zero_copy_only=False) for k in view.join_keys]
    keys = key_columns[0] if len(key_columns) == 1 else np.array(["\x1f".join(p) for p in zip(*key_columns)], object)
    codes, entities = pd.factorize(keys)
    codes = codes.astype(np.int64)
    ts = events.column(view.timestamp_field).cast(pa.int64()).to_numpy()
    a, b = events.column("_a").to_numpy(), events.column("_b").to_numpy()
    values = np.column_stack([events.column(c).to_numpy() for c in plan.columns]) if plan.columns \
        else np.zeros((len(ts), 0))
    bucket = plan.bucket(ts)
    cells = _Cells(plan, codes, bucket, ts, a, b, values)
    rows = np.arange(cells.n)
    if start_ns is not None:
        rows = rows[cells.bucket[rows] >= plan.bucket(np.int64(start_ns))]
    if end_ns is not None:
        rows = rows[cells.bucket[rows] * plan.g < end_ns]
    distinct = _distinct(view, plan, cells, rows, events, client, prefix) if plan.distinct else {}
    values_out = plan.fold(cells.bucket[rows], lambda buckets: cells.gather(cells.code[rows], buckets), distinct)
    frame = {k: _key_values(column[cells.first[rows]]) for k, column in zip(view.join_keys, key_columns)}
    frame[view.timestamp_field] = pd.to_datetime(plan.bucket_end(cells.bucket[rows]), utc=True)
    for field in view.schema:
        frame[field.name] = values_out[field.name]
    return pd.DataFrame(frame)


def _empty_columns(view: StreamFeatureView) -> dict[str, pd.Series]:
    columns = {k: pd.Series([], dtype=object) for k in view.join_keys}
    columns[view.timestamp_field] = pd.Series([], dtype="datetime64[ns, UTC]")
    for field in view.schema:
        columns[field.name] = pd.Series([], dtype=field.dtype)
    return columns


def _key_values(texts: np.ndarray) -> np.ndarray:
    """Join-key text as int64 when every value is an integer literal (as keys usually are), else as text."""
    try:
        numbers = texts.astype(np.int64)
    except (ValueError, OverflowError):
        return texts
    return numbers if (numbers.astype(str) == texts.astype(str)).all() else texts


class _Cells:
    """Per (entity, bucket) partials, sorted by (entity, bucket), built as the consumer's ring builds them."""

    def __init__(self, plan: Plan, codes: np.ndarray, bucket: np.ndarray, ts: np.ndarray, a: np.ndarray,
                 b: np.ndarray, values: np.ndarray):
        order = np.lexsort((bucket, codes))
        sorted_codes, sorted_buckets = codes[order], bucket[order]
        starts = np.flatnonzero(np.r_[True, (sorted_codes[1:] != sorted_codes[:-1]) |
                                      (sorted_buckets[1:] != sorted_buckets[:-1])])
        self.n = len(starts)
        self.code, self.bucket, self.first = sorted_codes[starts], sorted_buckets[starts], order[starts]
        is_start = np.zeros(len(codes), bool)
        is_start[starts] = True
        cell = np.empty(len(codes), np.int64)
        cell[order] = np.cumsum(is_start) - 1  # each event's cell
        c = values.shape[1]
        self.count = np.bincount(cell, minlength=self.n).astype(np.int64)
        self.sums, self.mins, self.maxs = np.zeros((self.n, c)), np.full((self.n, c), np.inf), \
            np.full((self.n, c), -np.inf)
        np.add.at(self.sums, cell, values)  # in stream order, one by one: as the consumer adds
        np.minimum.at(self.mins, cell, values)
        np.maximum.at(self.maxs, cell, values)
        newest = np.lexsort((b, a, ts, cell))
        ends = newest[np.flatnonzero(np.r_[cell[newest][1:] != cell[newest][:-1], True])]
        self.last, self.last_ts, self.last_a, self.last_b = values[ends], ts[ends], a[ends], b[ends]
        self.cell_of_event = cell
        span = int(self.bucket.max() - self.bucket.min()) + plan.slots + 1
        if (int(codes.max()) + 1) * span >= 2**62:
            raise OverflowError("too many entities x buckets for one backfill; backfill a shorter range")
        self.low, self.span = int(self.bucket.min()) - plan.slots, span
        self.composite = self.code * span + (self.bucket - self.low)

    def find(self, codes: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of the cell (entity code, bucket) of each pair, and whether it exists."""
        inside = (buckets >= self.low) & (buckets < self.low + self.span)
        wanted = codes * self.span + np.clip(buckets - self.low, 0, self.span - 1)
        at = np.clip(np.searchsorted(self.composite, wanted), 0, self.n - 1)
        return at, inside & (self.composite[at] == wanted)

    def gather(self, codes: np.ndarray, buckets: np.ndarray) -> Cells:
        at, present = self.find(codes, buckets)
        return Cells(present, self.count[at], self.sums[at], self.mins[at], self.maxs[at], self.last[at],
                     self.last_ts[at], self.last_a[at], self.last_b[at])


def _distinct(view: StreamFeatureView, plan: Plan, cells: _Cells, rows: np.ndarray, events: pa.Table,
              client: redis.Redis, prefix: str) -> dict:
    """PFCOUNT over each row's window, from one HyperLogLog per cell (scratch keys, removed after)."""
    base = f"{prefix}:stream:backfill:{uuid.uuid4().hex[:12]}"
    out: dict = {}
    made: list[str] = []
    order = np.argsort(cells.cell_of_event, kind="stable")
    bounds = np.searchsorted(cells.cell_of_event[order], np.arange(cells.n + 1))
    try:
        for column in plan.distinct:
            texts = events.column(text_column(view, column)).to_numpy(zero_copy_only=False)
            keys, args = [], [3_600_000]  # scratch keys live an hour at most, should this process die
            for cell in range(cells.n):
                values = texts[order[bounds[cell]:bounds[cell + 1]]].tolist()
                keys.append(f"{base}:{column}:{cell}")
                args += [len(values), *values]
                if len(args) > 50_000:
                    script(client, "pfadd_many")(keys=keys, args=args)
                    made += keys
                    keys, args = [], [3_600_000]
            if keys:
                script(client, "pfadd_many")(keys=keys, args=args)
                made += keys
            for spec in plan.windows:
                lo, _ = spec.bounds(cells.bucket[rows])
                # The window's cells are contiguous: from the entity's first cell at or after lo to the row's own.
                first = np.searchsorted(cells.composite, cells.code[rows] * cells.span + (lo - cells.low))
                windows = [([f"{base}:{column}:{c}" for c in range(start, stop + 1)], [])
                           for start, stop in zip(first.tolist(), rows.tolist())]
                out[(column, spec)] = distinct_counts(client, f"{base}:scratch", windows)
    finally:
        for i in range(0, len(made), _PIPELINE):
            client.unlink(*made[i:i + _PIPELINE])
    return out
