"""Per-entity window state: a ring of bucket partials, packed in one Redis value per entity.

The ring has one slot per bucket the longest window spans (slot = bucket mod
slots). A slot holds its bucket number, the event count and, per value column,
the sum, min, max and the last event's value; the slot's last event is ordered by
(event ns, a, b). The header holds the entity's latest accepted event time, which
is what lateness is judged against. A whole batch of entities is decoded with one
``np.frombuffer``, updated with ``np.add.at`` and friends, and packed back.
"""

from __future__ import annotations

import numpy as np

from mlplat.streaming.windows import NEVER, Cells, Plan, _later


class Ring:
    """The states of a set of entities, as plain arrays (one row per entity)."""

    def __init__(self, plan: Plan, blobs: list[bytes | None]):
        n, c = plan.slots, len(plan.columns)
        self.plan, self.slots = plan, n
        self.dtype = np.dtype([("latest", "<i8"), ("bucket", "<i8", (n,)), ("count", "<i8", (n,)),
                               ("sum", "<f8", (n, c)), ("min", "<f8", (n, c)), ("max", "<f8", (n, c)),
                               ("last", "<f8", (n, c)), ("last_ts", "<i8", (n,)), ("last_a", "<i8", (n,)),
                               ("last_b", "<i8", (n,))])
        blank = np.zeros(1, self.dtype)
        blank["latest"] = NEVER
        blank["bucket"] = NEVER
        blank = blank.tobytes()
        size = self.dtype.itemsize
        raw = b"".join(b if b is not None and len(b) == size else blank for b in blobs)
        records = np.frombuffer(raw, self.dtype)
        self.latest = records["latest"].copy()
        self.fields = {name: records[name].copy() for name in self.dtype.names if name != "latest"}

    def __len__(self) -> int:
        return len(self.latest)

    def apply(self, entity: np.ndarray, bucket: np.ndarray, ts: np.ndarray, a: np.ndarray, b: np.ndarray,
              values: np.ndarray) -> None:
        """Add events (in stream order) to their entities' bucket slots; every bucket must be live."""
        if not len(entity):
            return
        n = self.slots
        flat = {name: array.reshape(len(self) * n, *array.shape[2:]) for name, array in self.fields.items()}
        slot = entity * n + bucket % n
        first = np.unique(slot, return_index=True)[1]
        used, used_bucket = slot[first], bucket[first]
        older = flat["bucket"][used] != used_bucket  # the slot held an older bucket: start it afresh
        stale = used[older]
        flat["bucket"][stale] = used_bucket[older]
        for name, start in (("count", 0), ("sum", 0.0), ("min", np.inf), ("max", -np.inf), ("last", np.nan),
                            ("last_ts", NEVER), ("last_a", NEVER), ("last_b", NEVER)):
            flat[name][stale] = start
        np.add.at(flat["count"], slot, 1)
        if values.shape[1]:
            np.add.at(flat["sum"], slot, values)  # one by one, in stream order: both paths add in this order
            np.minimum.at(flat["min"], slot, values)
            np.maximum.at(flat["max"], slot, values)
        order = np.lexsort((b, a, ts, slot))
        ends = np.flatnonzero(np.r_[slot[order][1:] != slot[order][:-1], True])
        newest = order[ends]  # per slot, its batch's latest event
        target = slot[newest]
        newer = _later((ts[newest], a[newest], b[newest]),
                       [flat["last_ts"][target], flat["last_a"][target], flat["last_b"][target]])
        target, newest = target[newer], newest[newer]
        flat["last"][target] = values[newest]
        flat["last_ts"][target], flat["last_a"][target], flat["last_b"][target] = ts[newest], a[newest], b[newest]

    def gather(self, buckets: np.ndarray, rows: np.ndarray | None = None) -> Cells:
        """The cells of bucket ``buckets[i]`` of entity ``rows[i]`` (default: entity i)."""
        rows = np.arange(len(self)) if rows is None else rows
        slot = buckets % self.slots
        f = self.fields
        present = (f["bucket"][rows, slot] == buckets) & (f["count"][rows, slot] > 0)
        return Cells(present, f["count"][rows, slot], f["sum"][rows, slot], f["min"][rows, slot],
                     f["max"][rows, slot], f["last"][rows, slot], f["last_ts"][rows, slot],
                     f["last_a"][rows, slot], f["last_b"][rows, slot])

    def pack(self, rows: np.ndarray) -> list[bytes]:
        """The packed states of entities ``rows``."""
        records = np.zeros(len(rows), self.dtype)
        records["latest"] = self.latest[rows]
        for name, array in self.fields.items():
            records[name] = array[rows]
        size = self.dtype.itemsize
        raw = records.tobytes()
        return [raw[i * size:(i + 1) * size] for i in range(len(rows))]
