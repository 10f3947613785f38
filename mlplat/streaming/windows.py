"""What a stream feature's value is, and the one function both paths compute it with.

Definitions (the stream consumer and the batch backfill share them, and this code):

- Time is cut into *buckets* of ``g`` = the view's ``slide`` (tumbling windows: the
  gcd of the windows), aligned on the Unix epoch: bucket ``b`` holds event times
  ``[b*g, (b+1)*g)``. An event exactly on an edge belongs to the bucket it starts.
- An entity's *reference bucket* is the bucket of its latest accepted event.
  Its value of an aggregation with window ``W`` (``k = W/g`` buckets) covers the
  buckets ``lo..ref``: sliding windows ``lo = ref - k + 1`` (the last ``W`` of
  time up to the end of the reference bucket), tumbling windows
  ``lo = floor(ref / k) * k`` (the epoch-aligned ``W`` window holding the latest
  event, up to the reference bucket). Its timestamp is the reference bucket's end.
- So the online value is "as of the entity's latest event": it changes when the
  entity gets an event, and reads as missing once the view's ``ttl`` (default:
  the longest window) has passed since that timestamp. The backfill writes one
  row per (entity, bucket that holds an event of it), the value as of that
  bucket, so the training set at time t sees what was served at t (values from
  buckets that ended at or before t; never a later event) and an entity's
  latest backfilled row is its online value.
- Lateness: an event older than its entity's latest accepted event minus the
  view's ``watermark`` is late, judged in stream order, and dead-lettered.
- Functions: count (events), sum, mean (sum / count), min, max, last (the value
  of the event with the largest event time; ties go to the later stream entry),
  approx_count_distinct (Redis HyperLogLog over the window's buckets).

Exactness: both paths fold per-bucket partial results over a window with
:func:`fold` in the same order, so count, min, max, last and distinct agree
exactly. Sum and mean are sums of floats: with one consumer they agree bit for bit
(each bucket's sum is accumulated in stream order on both paths); when several
consumers apply batches of one entity out of order, to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlplat.streaming.definitions import NUMERIC, StreamFeatureView, duration_ns

NEVER = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Cells:
    """Per-bucket partial results for a set of rows (one bucket each); ``present`` marks buckets with events.

    ``sums``, ``mins``, ``maxs``, ``last`` are (rows, columns) arrays, one column per
    value column; ``last_ts``, ``last_a``, ``last_b`` order the bucket's last event
    (every event carries every value column, so one last event serves them all).
    """

    present: np.ndarray
    count: np.ndarray
    sums: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    last: np.ndarray
    last_ts: np.ndarray
    last_a: np.ndarray
    last_b: np.ndarray


@dataclass(frozen=True)
class WindowSpec:
    """One distinct (window length, tumbling) pair and the aggregations over it."""

    k: int  # buckets per window
    tumbling: bool

    def bounds(self, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last bucket of the window of each reference bucket."""
        lo = (ref // self.k) * self.k if self.tumbling else ref - self.k + 1
        return lo, ref


class Plan:
    """The bucket arithmetic of one stream view: bucket length, windows, value columns."""

    def __init__(self, view: StreamFeatureView):
        self.view = view
        self.g = duration_ns(view.granularity)
        self.columns = view.value_columns
        self.distinct = view.distinct_columns
        self.column_index = {c: i for i, c in enumerate(self.columns)}
        tumbling = view.slide is None
        self.specs: dict[str, WindowSpec] = {}
        for agg in view.aggregations:
            self.specs[agg.name] = WindowSpec(duration_ns(agg.window) // self.g, tumbling)
        self.windows = list(dict.fromkeys(self.specs.values()))
        self.slots = max(spec.k for spec in self.windows)  # buckets any window can reach back

    def bucket(self, ts_ns: np.ndarray) -> np.ndarray:
        return ts_ns // self.g

    def bucket_end(self, bucket: np.ndarray) -> np.ndarray:
        return (bucket + 1) * self.g

    def fold(self, ref: np.ndarray, gather: Callable[[np.ndarray], Cells],
             distinct: dict[tuple[str, WindowSpec], np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every aggregation's value for each reference bucket; ``gather(buckets)`` gives each row's cells.

        Buckets are folded oldest first, the same float operations in the same
        order on every path. ``distinct`` holds the HyperLogLog counts by (column, window).
        """
        out: dict[str, np.ndarray] = {}
        for spec in self.windows:
            acc = self._fold_window(spec, ref, gather)
            for agg in self.view.aggregations:
                if self.specs[agg.name] != spec:
                    continue
                if agg.function == "count":
                    out[agg.name] = acc["count"]
                elif agg.function == "approx_count_distinct":
                    out[agg.name] = distinct[(agg.column, spec)] if len(ref) else np.zeros(0, np.int64)
                else:
                    out[agg.name] = _finish(agg.function, acc, self.column_index[agg.column])
        return out

    def _fold_window(self, spec: WindowSpec, ref: np.ndarray, gather: Callable[[np.ndarray], Cells]) -> dict:
        n, c = len(ref), len(self.columns)
        lo, hi = spec.bounds(ref)
        count = np.zeros(n, np.int64)
        sums = np.zeros((n, c))
        mins = np.full((n, c), np.inf)
        maxs = np.full((n, c), -np.inf)
        last = np.full((n, c), np.nan)
        key = [np.full(n, NEVER, np.int64) for _ in range(3)]
        for offset in range(spec.k):
            buckets = lo + offset
            cells = gather(buckets)
            present = cells.present & (buckets <= hi)
            count += np.where(present, cells.count, 0)
            if not c:
                continue
            here = present[:, None]
            sums = sums + np.where(here, cells.sums, 0.0)
            mins = np.where(here, np.minimum(mins, cells.mins), mins)
            maxs = np.where(here, np.maximum(maxs, cells.maxs), maxs)
            newer = present & _later((cells.last_ts, cells.last_a, cells.last_b), key)
            last = np.where(newer[:, None], cells.last, last)
            key = [np.where(newer, new, old) for new, old in zip((cells.last_ts, cells.last_a, cells.last_b), key)]
        empty = (count == 0)[:, None]
        mins, maxs = np.where(empty, np.nan, mins), np.where(empty, np.nan, maxs)
        return {"count": count, "sum": sums, "min": mins, "max": maxs, "last": last}


def _later(new: tuple[np.ndarray, ...], old: list[np.ndarray]) -> np.ndarray:
    """Where (ts, a, b) ``new`` sorts after ``old``."""
    (t1, a1, b1), (t0, a0, b0) = new, old
    return (t1 > t0) | ((t1 == t0) & ((a1 > a0) | ((a1 == a0) & (b1 > b0))))


def _finish(function: str, acc: dict, column: int) -> np.ndarray:
    assert function in NUMERIC
    if function == "mean":
        counts = acc["count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, acc["sum"][:, column] / np.maximum(counts, 1), np.nan)
    return acc[function][:, column]
