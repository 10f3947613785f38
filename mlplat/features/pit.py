"""Point-in-time joins: for each query row, the latest data row at or before its time.

The join is vectorised numpy: entity keys become integer codes, timestamps
become ranks, and one ``searchsorted`` over a combined (code, rank) key finds,
for every query row at once, the last data row of the same entity with
``timestamp <= t``. Ties on timestamp go to the larger created timestamp, then
to the row ingested last. Rows older than the TTL count as missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def codes_of(keys: list[np.ndarray]) -> np.ndarray:
    """Small int64 codes, equal exactly where the tuples of key values are equal."""
    combined: np.ndarray | None = None
    for column in keys:
        codes, uniques = pd.factorize(column)
        codes = codes.astype(np.int64)
        combined = codes if combined is None else combined * (len(uniques) + 1) + codes
    if len(keys) > 1:  # keep codes small so (code, rank) fits in int64
        combined = pd.factorize(combined)[0].astype(np.int64)
    return combined


def key_codes(query_keys: list[np.ndarray], data_keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Codes for both sides at once, so equal key tuples get equal codes."""
    joined = [np.concatenate([q, d]) if q.dtype == d.dtype else np.concatenate(_common_type(q, d))
              for q, d in zip(query_keys, data_keys)]
    codes = codes_of(joined)
    n = len(query_keys[0])
    return codes[:n], codes[n:]


def _common_type(q: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if q.dtype.kind in "iu" and d.dtype.kind in "iu":
        return q.astype(np.int64), d.astype(np.int64)
    return q.astype(object), d.astype(object)


def latest_at(
    query_codes: np.ndarray, query_ts: np.ndarray, data_codes: np.ndarray, data_ts: np.ndarray,
    data_created: np.ndarray | None = None, ttl_ns: int | None = None,
) -> np.ndarray:
    """Index into the data rows for each query row, or -1 where there is none in time.

    Data rows must be in ingest order (the stable sort keeps the last-ingested
    row last among exact ties). Timestamps are int64 nanoseconds.
    """
    if len(data_ts) == 0:
        return np.full(len(query_ts), -1, dtype=np.int64)
    data_key, query_key = _sortable_keys(query_codes, query_ts, data_codes, data_ts)
    order = np.argsort(data_key)  # unstable is several times faster; exact ties are redone below
    sorted_key = data_key[order]
    if np.any(sorted_key[1:] == sorted_key[:-1]):
        # Same entity, same time: the later created time wins, then the later ingest (lexsort is stable).
        order = np.lexsort((data_key,) if data_created is None else (data_created, data_key))
        sorted_key = data_key[order]
    pos = _search_right(sorted_key, query_key) - 1
    found = pos >= 0
    hit = order[np.maximum(pos, 0)]
    found &= data_codes[hit] == query_codes
    if ttl_ns is not None:
        found &= query_ts - data_ts[hit] <= ttl_ns
    return np.where(found, hit, -1)


def _sortable_keys(query_codes, query_ts, data_codes, data_ts) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per row ordering rows by (code, time), comparable across both sides.

    ``code * span + time offset``, the offset counted in the coarsest unit
    (second, ms, us or ns) that every *data* time is a whole multiple of; query
    times are floored to it, which keeps ``data <= query`` exact. When even
    that does not fit beside the code, data times are replaced by their rank.
    """
    lo, width = int(data_ts.min()), int(data_ts.max()) - int(data_ts.min())
    codes = int(max(data_codes.max(), query_codes.max() if len(query_codes) else 0)) + 1
    for unit in (1_000_000_000, 1_000_000, 1_000, 1) if width < 2**62 else ():
        if unit > 1 and np.any((data_ts - lo) % unit):
            continue
        last = width // unit
        if codes * (last + 2) < 2**62:
            data_offset = (data_ts - lo) // unit
            # Clipping first keeps the subtraction in range; lo - 1 floors to -1: before every data row.
            query_offset = (np.clip(query_ts, lo - 1, lo + width) - lo) // unit
            return _pack(data_codes, data_offset, query_codes, query_offset, last + 2)
        break  # a finer unit only makes the span longer
    order = np.argsort(data_ts)
    ordered = data_ts[order]
    first = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    distinct = ordered[first]
    data_rank = np.empty(len(data_ts), dtype=np.int64)
    data_rank[order] = np.cumsum(first) - 1
    query_rank = _search_right(distinct, query_ts) - 1
    return _pack(data_codes, data_rank, query_codes, query_rank, len(distinct) + 1)


def _pack(data_codes, data_offset, query_codes, query_offset, span: int) -> tuple[np.ndarray, np.ndarray]:
    """``code * span + offset + 1``: offsets of -1 (queries before all data) stay inside their code."""
    return data_codes * span + data_offset + 1, query_codes * span + query_offset + 1


def _search_right(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(..., side="right")``, made cache-friendly by searching in sorted order."""
    order = np.argsort(queries)
    positions = np.empty(len(queries), dtype=np.int64)
    positions[order] = np.searchsorted(sorted_values, queries[order], side="right")
    return positions


def latest_per_key(codes: np.ndarray, ts: np.ndarray, created: np.ndarray | None = None) -> np.ndarray:
    """Index of the newest row of each code (ties as in :func:`latest_at`)."""
    keys = (ts, codes) if created is None else (created, ts, codes)
    order = np.lexsort(keys)
    sorted_codes = codes[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_codes[1:] != sorted_codes[:-1]
    return order[last]
