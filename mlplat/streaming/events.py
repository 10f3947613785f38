"""Decode stream entries into typed event columns, setting aside the ones that cannot be used.

An entry is ``(id, fields)``: the fields a producer ``XADD``-ed (bytes names and
values) or a Kafka message's JSON object turned into the same. An event needs
every join key, the timestamp field and every aggregated column:

- timestamps: ISO 8601 (naive = UTC) or a Unix epoch number, told apart by size:
  below 1e11 seconds (fractions allowed), below 1e14 milliseconds, below 1e17
  microseconds, else nanoseconds;
- summed/min/max/mean/last columns: a finite decimal number; distinct-counted
  columns: any UTF-8 text; join keys: the text the entity is looked up by
  (``str(value)``, so send 42, not 42.0).

An entry that fails is dead-lettered with a reason and a detail naming the
field; nothing is dropped silently, and no content of an entry can stop the
others of its batch from applying. The reasons, the first that applies:

- ``bad message``: a source's message that is not a JSON object of text (Kafka);
- ``duplicate field``: a field name given twice (which value would be meant?);
- ``missing key``, ``missing timestamp``, ``missing value``: a field the view needs is absent or empty;
- ``undecodable``: such a field holds bytes that are not UTF-8 text;
- ``bad timestamp``, ``bad value``: it is not a time, or not a finite number (longer than
  ``LONGEST_NUMBER`` bytes: not one either);
- ``future``: the event is dated later than now plus the allowed clock skew
  (the ``max_clock_skew`` setting), so it cannot have happened yet;
- ``late`` (decided by the consumer): older than its entity's latest event minus the watermark.

Entries without fields (deleted from the stream before they were read) are skipped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlplat.streaming.definitions import StreamFeatureView

Entry = tuple[Any, Any]  # (entry id, {field: value} or [field, value, ...]), names and values bytes or str


@dataclass
class DeadLetter:
    """An entry that was not applied, and why."""

    entry_id: str
    fields: dict
    reason: str
    detail: str


@dataclass
class Events:
    """The usable events of a batch, as columns, in stream order."""

    ids: list[str]
    order_a: np.ndarray  # (a, b): the entry's place in the stream (Redis: ms, seq; Kafka: partition, offset)
    order_b: np.ndarray
    codes: np.ndarray  # each event's entity, an index into ``entities``
    entities: list[str]  # entity key text (join keys joined by \x1f), each once
    key_columns: list[list]  # each join key's value per event, as sent (text or bytes)
    ts: np.ndarray  # int64 ns UTC
    values: np.ndarray  # float64 (events, value columns)
    texts: dict[str, list[str]]  # distinct-counted column -> text values

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def keys(self) -> list[str]:
        return [self.entities[c] for c in self.codes.tolist()]

    def take(self, rows: np.ndarray) -> Events:
        pick = rows.tolist()
        return Events([self.ids[i] for i in pick], self.order_a[rows], self.order_b[rows], self.codes[rows],
                      self.entities, [[col[i] for i in pick] for col in self.key_columns], self.ts[rows],
                      self.values[rows], {c: [v[i] for i in pick] for c, v in self.texts.items()})


LONGEST_NUMBER = 64  # bytes: longer timestamp or number fields are refused unparsed (a huge one would be a
# huge fixed-width array for the whole batch)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def shown(value: Any, limit: int = 80) -> str:
    """``value`` as a short quoted text for a dead letter's detail: ``'lots'``, or ``b'\\xff'`` for bytes that are
    not UTF-8 text, cut after ``limit`` characters (with the size sent)."""
    size = f"{len(value):,} {'bytes' if isinstance(value, bytes) else 'characters'}"
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            pass  # shown as bytes
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({size})"


def order_of(ids: list[str]) -> np.ndarray:
    """(a, b) of each entry id, as an (n, 2) array: Redis ``ms-seq``, or ``topic/partition/offset`` from Kafka."""
    if not ids:
        return np.zeros((0, 2), np.int64)
    if "/" not in ids[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy's "could not be read to its end"
            try:
                numbers = np.fromstring(" ".join(ids).replace("-", " "), dtype=np.int64, sep=" ")
            except (ValueError, DeprecationWarning):
                numbers = np.zeros(0, np.int64)
        if len(numbers) == 2 * len(ids):
            return numbers.reshape(-1, 2)
        # an id without a sequence part, or a mixed batch
    pairs = [(int(i.rsplit("/", 2)[1]), int(i.rsplit("/", 2)[2])) if "/" in i else
             (int(i.partition("-")[0]), int(i.partition("-")[2] or 0)) for i in ids]
    return np.array(pairs, np.int64).reshape(-1, 2)


def decode(view: StreamFeatureView, columns: list[str], entries: list[Entry],
           not_after_ns: int | None = None) -> tuple[Events, list[DeadLetter]]:
    """The events of ``entries`` for ``view`` (``columns``: its value columns) and the dead letters.

    ``entries`` hold ``(id, fields)`` with ``fields`` a dict or Redis's flat
    ``[name, value, name, value, ...]`` list; entries trimmed from a stream (no fields) are skipped.
    Events dated after ``not_after_ns`` are dead-lettered as ``future``. Never raises on what an entry holds.
    """
    entries = [entry for entry in entries if entry[1]]
    n = len(entries)
    wanted = [*view.join_keys, view.timestamp_field, *columns, *view.distinct_columns, "_error"]
    fields, doubled = _columns(entries, list(dict.fromkeys(wanted)))
    bad = np.zeros(n, dtype=object)  # (reason, detail) of the first problem, 0 where none
    errors = fields["_error"]
    _mark(bad, [] if errors.count(None) == n else [e is not None for e in errors], "bad message",
          lambda i: shown(errors[i], 200))
    if doubled:
        _mark(bad, np.isin(np.arange(n), list(doubled)), "duplicate field",
              lambda i: f"the field {shown(doubled[i])} is given more than once")
    keys = [fields[k] for k in view.join_keys]
    for name, column in zip(view.join_keys, keys):
        _mark(bad, _missing(column), "missing key", lambda i, name=name: f"no {name!r} field")
    raw_ts = fields[view.timestamp_field]
    _mark(bad, _missing(raw_ts), "missing timestamp", lambda i: f"no {view.timestamp_field!r} field")
    ts, ts_ok = parse_timestamps(raw_ts)
    _mark_unparsed(bad, view.timestamp_field, raw_ts, ts_ok, "bad timestamp", "is not a time")
    if not_after_ns is not None:
        _mark(bad, ts_ok & (ts > not_after_ns), "future",
              lambda i: f"{view.timestamp_field} {pd.Timestamp(int(ts[i]), tz='UTC').isoformat()} is later than now "
                        "plus the allowed clock skew (the max_clock_skew setting)")
    values = np.zeros((n, len(columns)))
    for j, name in enumerate(columns):
        raw = fields[name]
        _mark(bad, _missing(raw), "missing value", lambda i, name=name: f"no {name!r} field")
        values[:, j], ok = parse_numbers(raw)
        _mark_unparsed(bad, name, raw, ok, "bad value", "is not a finite number")
    texts = {}
    for name in view.distinct_columns:
        raw = fields[name]
        _mark(bad, _missing(raw), "missing value", lambda i, name=name: f"no {name!r} field")
        texts[name], ok = _utf8(raw)
        _mark(bad, ~ok, "undecodable", lambda i, name=name, raw=raw: f"{name}={shown(raw[i])} is not UTF-8 text")
    joined = keys[0] if len(keys) == 1 else [b"\x1f".join(map(_bytes, parts)) if all(parts) else None
                                             for parts in zip(*keys)]
    codes, uniques = pd.factorize(np.asarray(joined, dtype=object))
    entities, ok = _utf8(list(uniques))
    if not ok.all():
        _mark(bad, (codes >= 0) & ~ok[codes], "undecodable", lambda i: f"the key {shown(joined[i])} is not UTF-8 text")
    failed = bad != 0
    dead = [DeadLetter(_text(entries[i][0]), _as_dict(entries[i][1]), *bad[i]) for i in np.flatnonzero(failed).tolist()]
    good = np.flatnonzero(~failed)
    pick = good.tolist() if dead else range(n)
    ids = _ids([entries[j][0] for j in pick])
    order = order_of(ids)
    events = Events(ids, order[:, 0], order[:, 1], codes[good].astype(np.int64), entities,
                    [[col[i] for i in pick] if dead else list(col) for col in keys], ts[good], values[good],
                    {c: [v[i] for i in pick] if dead else v for c, v in texts.items()})
    return events, dead


def _ids(raw: list) -> list[str]:
    """Entry ids as text (one decode for a batch of bytes ids)."""
    if raw and all(type(i) is bytes for i in raw):
        return b"\0".join(raw).decode().split("\0")
    return [i.decode() if type(i) is bytes else str(i) for i in raw]


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _utf8(values: list) -> tuple[list[str], np.ndarray]:
    """Values as str, and which were valid UTF-8 (the others come back as '')."""
    try:
        return [v.decode() if isinstance(v, bytes) else ("" if v is None else str(v)) for v in values], \
            np.ones(len(values), bool)
    except UnicodeDecodeError:
        out, ok = [], np.ones(len(values), bool)
        for i, v in enumerate(values):
            try:
                out.append(v.decode() if isinstance(v, bytes) else ("" if v is None else str(v)))
            except UnicodeDecodeError:
                out.append("")
                ok[i] = False
        return out, ok


def _as_dict(fields) -> dict:
    return dict(zip(fields[0::2], fields[1::2])) if isinstance(fields, list) else dict(fields)


def _columns(entries: list[Entry], names: list[str]) -> tuple[dict[str, list], dict[int, Any]]:
    """Each named field of every entry, as sent (None where absent), and the entries that give a field name more
    than once (entry index -> that name).

    When every entry lists the same fields in the same order (one producer, the usual
    case), values are picked by position: no dict per entry. Field names are compared as bytes,
    so any name a producer sends (UTF-8 or not) is just a name.
    """
    n = len(entries)
    if n and isinstance(entries[0][1], list):
        rows = [f for _, f in entries]
        layout = rows[0][0::2]
        width = len(rows[0])
        if set(map(len, rows)) == {width} and len(set(layout)) == len(layout):
            cells = list(zip(*rows))  # one tuple per position: names at even ones, values at odd ones
            if all(cells[2 * i].count(k) == n for i, k in enumerate(layout)):
                where = {_bytes(k): 2 * i + 1 for i, k in enumerate(layout)}
                return {name: list(cells[j]) if (j := where.get(name.encode())) is not None else [None] * n
                        for name in names}, {}
        doubled = {i: _doubled(f) for i, (_, f) in enumerate(entries) if len(f) != 2 * len(set(f[0::2]))}
        entries = [(i, _as_dict(f)) for i, f in entries]
    else:
        doubled = {}
    out = {}
    for name in names:
        as_bytes = name.encode()
        out[name] = [f[as_bytes] if as_bytes in f else f.get(name) for _, f in entries]
    return out, doubled


def _doubled(fields: list) -> Any:
    """The first field name a flat ``[name, value, ...]`` list gives twice."""
    names = fields[0::2]
    return next(name for i, name in enumerate(names) if name in names[:i])


def _missing(column: list) -> list[bool]:
    """Which values are missing (empty: none is, found without a Python loop)."""
    return [] if all(column) else [not v for v in column]


def _mark(bad: np.ndarray, failed, reason: str, detail) -> None:
    for i in np.flatnonzero(np.asarray(failed, dtype=bool)).tolist():
        if bad[i] == 0:
            bad[i] = (reason, detail(i))


def _mark_unparsed(bad: np.ndarray, name: str, raw: list, parsed: np.ndarray, reason: str, meaning: str) -> None:
    """Mark the values of field ``name`` that did not parse: ``undecodable`` bytes, else ``reason``."""
    failed = np.flatnonzero(~parsed)
    if not len(failed):
        return
    undecodable = np.zeros(len(raw), bool)
    undecodable[[i for i in failed.tolist() if _not_utf8(raw[i])]] = True
    _mark(bad, undecodable, "undecodable", lambda i: f"{name}={shown(raw[i])} is not UTF-8 text")
    _mark(bad, ~parsed, reason, lambda i: f"{name}={shown(raw[i])} {meaning}")


def _not_utf8(value: Any) -> bool:
    if not isinstance(value, bytes):
        return False
    try:
        value.decode()
    except UnicodeDecodeError:
        return True
    return False


def _short(raw: list, fill: bytes) -> tuple[list, np.ndarray | None]:
    """``raw`` with missing values as ``fill``, and (when some are longer than LONGEST_NUMBER) those as ``fill``
    too, with a mask of which were too long (None when none was)."""
    filled = [v or fill for v in raw]
    if not filled or max(map(len, filled)) <= LONGEST_NUMBER:
        return filled, None
    long = np.array([len(v) > LONGEST_NUMBER for v in filled], bool)
    return [fill if too_long else v for v, too_long in zip(filled, long.tolist())], long


def parse_numbers(raw: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Floats and which parsed as finite numbers (missing, undecodable and over-long values count as not parsed)."""
    filled, long = _short(raw, b"nan")
    try:
        values = np.array(filled, dtype="S").astype(np.float64) if raw else np.zeros(0)
    except (ValueError, UnicodeEncodeError):
        texts = pd.Series([v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in filled],
                          dtype=object)
        values = pd.to_numeric(texts, errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(values)
    return values, ok if long is None else ok & ~long


_INT64 = np.iinfo(np.int64).max
_SCALE = ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000), (float("inf"), 1))  # epoch size -> ns factor


def parse_timestamps(raw: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since the epoch (UTC) and which entries parsed (missing, undecodable and over-long ones not)."""
    n = len(raw)
    out = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    short, long = _short(raw, b"")
    try:  # the common case: whole epoch numbers
        whole = np.array(short, dtype="S").astype(np.int64) if n else np.zeros(0, np.int64)
        _scale_whole(whole, out, ok, np.ones(n, bool) if long is None else ~long)
        return out, ok
    except (ValueError, OverflowError, UnicodeEncodeError):
        pass
    filled = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in short]
    series = pd.Series(filled, dtype=object)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    numeric = np.isfinite(numbers)
    integral = numeric & np.array([v.lstrip("-").isdigit() and len(v) < 19 for v in filled], dtype=bool)
    if integral.any():
        _scale_whole(np.array([int(v) if i else 0 for v, i in zip(filled, integral)], dtype=np.int64), out, ok,
                     integral)
    fractional = numeric & ~integral
    done = ~fractional
    for limit, factor in _SCALE:
        pick = ~done & (np.abs(numbers) < limit)
        done |= pick
        pick &= np.abs(numbers) < _INT64 / factor  # past year 2262: out of range
        out[pick] = np.round(numbers[pick] * factor).astype(np.int64)
        ok |= pick
    text = ~numeric & (series != "").to_numpy()
    if text.any():
        parsed = pd.to_datetime(series[text], format="ISO8601", utc=True, errors="coerce")
        good = parsed.notna().to_numpy()
        rows = np.flatnonzero(text)[good]
        out[rows] = parsed[good].dt.as_unit("ns").astype("int64").to_numpy()
        ok[rows] = True
    return out, ok


def _scale_whole(whole: np.ndarray, out: np.ndarray, ok: np.ndarray, pick: np.ndarray) -> None:
    size = np.abs(whole)  # the smallest int64 stays negative here: out of range like its neighbours
    done = ~pick
    for limit, factor in _SCALE:
        rows = ~done & (size < limit)
        done |= rows
        rows &= (size <= _INT64 // factor) & (size >= 0)
        out[rows] = whole[rows] * factor
        ok |= rows
