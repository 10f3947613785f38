"""The online store: one packed binary value per (view version, entity) in Redis.

Key:   ``<prefix>:<view>:<version>:<entity key>``, the entity key being the
       join-key values as text, joined by ``\\x1f`` when there are several.
Value: a little-endian packed record (numpy structured dtype, no padding)::

           int64 event_ns | int64 created_ns | uint8 valid[n_features]
           | one block per numeric dtype, e.g. float32[k] (the view's float32 features in schema order)
           then, for views with string features, uint32 length + UTF-8 bytes per string.

A read is one ``MGET`` for every entity of every view, decoded by a single
``np.frombuffer`` per view and one ``tolist()`` per dtype block: Python objects
are made only for the values returned.
Each key expires (``PXAT``) when its value passes the view's TTL, so expired
entities read as missing without a check on the hot path. Writes compare with
what is stored and never replace a newer value with an older one, in
``MULTI``/``EXEC`` batches, so re-running a materialisation is harmless. Every
writer (materialise, push, the stream consumer) also raises the view's newest
event time in one sorted set (:func:`newest_events_key`) in the same batch: the
age of what is served is read from there, whatever wrote it.

An embedded Redis is looked up again each time a connection is (re)made, so a
client outlives a Redis restart, even one on another port.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from mlplat.errors import MissingColumnError, OnlineStoreUnavailable
from mlplat.features.definitions import FeatureView
from mlplat.features.redis_users import without_password

_NUMPY = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "u1"}
_HEADER = np.dtype([("event_ns", "<i8"), ("created_ns", "<i8")])
BATCH = 5000
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True)
class _DecodePlan:
    """For one tuple of requested features: which block columns hold them."""

    blocks: list[tuple[str, np.ndarray | None, list[str], bool]]  # block, columns (None: all), names, is_bool
    positions: np.ndarray  # each requested feature's index in the valid flags
    strings: list[str]


class RecordCodec:
    """Packs rows of one view version into bytes and back.

    Numeric features of one dtype sit side by side in one block, so a whole
    block decodes to per-feature Python lists with a single ``.T.tolist()``.
    """

    def __init__(self, view: FeatureView):
        self.view = view
        self.position = {f.name: i for i, f in enumerate(view.schema)}
        self.strings = [f.name for f in view.schema if f.dtype == "string"]
        self.blocks: dict[str, list[str]] = {}  # block name -> feature names, in schema order
        for field in view.schema:
            if field.dtype != "string":
                self.blocks.setdefault(field.dtype, []).append(field.name)
        self.slot = {name: (block, i) for block, names in self.blocks.items() for i, name in enumerate(names)}
        fields = [("event_ns", "<i8"), ("created_ns", "<i8"), ("valid", "u1", (len(view.schema),))]
        fields += [(block, _NUMPY[block], (len(names),)) for block, names in self.blocks.items()]
        self.dtype = np.dtype(fields)
        self.blank = b"\0" * self.dtype.itemsize  # all valid flags zero: every feature null
        self._plans: dict[tuple[str, ...], _DecodePlan] = {}

    def encode(self, table: pa.Table, event_ns: np.ndarray, created_ns: np.ndarray) -> list[bytes]:
        """One packed value per row of ``table`` (which holds the view's features)."""
        n = table.num_rows
        records = np.zeros(n, dtype=self.dtype)
        records["event_ns"] = event_ns
        records["created_ns"] = created_ns
        for field in self.view.schema:
            column = table.column(field.name)
            records["valid"][:, self.position[field.name]] = ~column.is_null().to_numpy(zero_copy_only=False)
            if field.dtype != "string":
                block, i = self.slot[field.name]
                filler = pa.scalar(False if field.dtype == "bool" else 0, column.type)
                records[block][:, i] = column.fill_null(filler).to_numpy(zero_copy_only=False)
        size = self.dtype.itemsize
        raw = records.tobytes()
        values = [raw[i * size:(i + 1) * size] for i in range(n)]
        if self.strings:
            texts = [table.column(name).to_pylist() for name in self.strings]
            values = [value + b"".join(_pack_text(column[i]) for column in texts) for i, value in enumerate(values)]
        return values

    def decode(self, values: list[bytes | None], features: tuple[str, ...]) -> dict[str, list]:
        """Columns of feature values (None where missing) from stored values."""
        plan = self._plans.get(features) or self._plan(features)
        if self.strings:
            size = self.dtype.itemsize
            fixed = b"".join(self.blank if v is None else v[:size] for v in values)
        else:
            fixed = b"".join(self.blank if v is None else v for v in values)
        records = np.frombuffer(fixed, dtype=self.dtype)
        out: dict[str, list] = {}
        for block, columns, names, is_bool in plan.blocks:
            data = records[block] if columns is None else records[block][:, columns]
            out.update(zip(names, (data.astype(bool) if is_bool else data).T.tolist()))
        if plan.strings:
            out.update(self._decode_texts(values, plan.strings))
        valid = records["valid"][:, plan.positions]
        if not valid.all():
            for name, flags in zip(features, valid.T.tolist()):
                out[name] = [x if ok else None for x, ok in zip(out[name], flags)]
        return {name: out[name] for name in features}

    def _plan(self, features: tuple[str, ...]) -> _DecodePlan:
        blocks = []
        for block, names in self.blocks.items():
            wanted = [name for name in features if self.slot.get(name, ("",))[0] == block]
            if wanted:
                columns = None if wanted == names else np.array([self.slot[n][1] for n in wanted])
                blocks.append((block, columns, wanted, block == "bool"))
        positions = np.array([self.position[name] for name in features], dtype=np.intp)
        plan = _DecodePlan(blocks, positions, [n for n in features if n in self.strings])
        self._plans[features] = plan
        return plan

    def _decode_texts(self, values: list[bytes | None], wanted: list[str]) -> dict[str, list]:
        size = self.dtype.itemsize
        columns: dict[str, list] = {name: [] for name in self.strings}
        for value in values:
            offset = size
            for name in self.strings:
                if value is None:
                    columns[name].append(None)
                    continue
                (length,) = struct.unpack_from("<I", value, offset)
                columns[name].append(value[offset + 4:offset + 4 + length].decode())
                offset += 4 + length
        return {name: columns[name] for name in wanted}

    def stamps(self, values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """(event_ns, created_ns) of stored values; int64 min where absent."""
        blank = np.array([(np.iinfo(np.int64).min,) * 2], dtype=_HEADER).tobytes()
        head = np.frombuffer(b"".join(v[:16] if v is not None else blank for v in values), dtype=_HEADER)
        return head["event_ns"], head["created_ns"]


def _pack_text(text: str | None) -> bytes:
    data = b"" if text is None else text.encode()
    return struct.pack("<I", len(data)) + data


def newest_events_key(prefix: str) -> str:
    """Sorted set: feature view name -> the newest event time (ns) written online, by any writer."""
    return f"{prefix}:newest_event"


def record_newest(pipe: Any, prefix: str, view: str, event_ns: int) -> None:
    """Queue raising ``view``'s newest online event time to ``event_ns`` (never lowering it)."""
    pipe.zadd(newest_events_key(prefix), {view: int(event_ns)}, gt=True)


def entity_key_strings(columns: list[list[Any]] | list[np.ndarray]) -> list[str]:
    """Join-key values as the text used in online keys."""
    if len(columns) == 1:
        return [str(v) for v in columns[0]]
    return ["\x1f".join(map(str, parts)) for parts in zip(*columns)]


def read_online(store: RedisOnlineStore, plan: list[tuple[Any, RecordCodec]], columns: dict[str, Any]) -> dict[str, list]:
    """Entity columns plus one column per requested feature, with one MGET for all views.

    ``plan`` pairs each view request (``mlplat.features.refs.ViewRequest``) with its codec.
    """
    keys: list[str] = []
    spans = []
    for request, _ in plan:
        try:
            key_columns = [columns[k] for k in request.view.join_keys]
        except KeyError as missing:
            raise MissingColumnError(
                f"Entity rows lack join key {missing.args[0]!r}, needed for view {request.view.name!r}."
            ) from None
        start = len(keys)
        prefix = store.key_prefix(request.view)
        keys.extend(prefix + k for k in entity_key_strings(key_columns))
        spans.append((start, len(keys)))
    values = store.mget(keys)
    out = {name: list(values_) for name, values_ in columns.items()}
    for (request, codec), (start, stop) in zip(plan, spans):
        decoded = codec.decode(values[start:stop], request.features)
        out.update(zip(request.columns, (decoded[f] for f in request.features)))
    return out


class LocatingConnection(redis.Connection):
    """A Redis connection that asks ``locate()`` for the server's URL each time it connects.

    For the embedded Redis, ``locate`` finds the running server (starting it if it died), so a
    connection broken by a restart reconnects wherever the server listens now.
    """

    def __init__(self, *, locate: Callable[[], str], **kwargs: Any):
        super().__init__(**kwargs)
        self.locate = locate

    def _connect(self) -> Any:
        where = urlparse(self.locate())
        self.host, self.port = where.hostname or "127.0.0.1", where.port or 6379
        return super()._connect()


@dataclass
class RedisOnlineStore:
    """Reads and writes packed feature records in Redis.

    ``locate`` (the embedded Redis) gives the server's current URL; connections made
    after a restart go there, and a command cut by the restart is sent again.
    """

    url: str
    prefix: str = "mlp"
    locate: Callable[[], str] | None = dataclass_field(default=None, repr=False, compare=False)

    @cached_property
    def client(self) -> redis.Redis:
        # A few retries on a broken connection: a restarted server is back within a second or two.
        retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2), 5, supported_errors=(redis.ConnectionError,))
        if self.locate is None:
            return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5, retry=retry)
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5, retry=retry,
                                    connection_class=LocatingConnection, locate=self.locate)

    def key_prefix(self, view: FeatureView) -> str:
        return f"{self.prefix}:{view.name}:{view.version}:"

    def ping(self) -> None:
        """Raise OnlineStoreUnavailable unless Redis answers."""
        try:
            self.client.ping()
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return self.client.mget(keys)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None

    def write(self, view: FeatureView, codec: RecordCodec, entity_keys: list[str], table: pa.Table,
              event_ns: np.ndarray, created_ns: np.ndarray, ttl_ns: int | None, now_ns: int) -> int:
        """Store rows that are newer than what is stored; return how many were written.

        Each batch is a compare-and-set: the keys are WATCHed while their stored
        times are read, and the batch is retried if another writer (a push, a
        concurrent materialisation) changed one of them before ``EXEC``.
        """
        written = 0
        prefix = self.key_prefix(view)
        expire_ms = None if ttl_ns is None else (event_ns + ttl_ns) // 1_000_000
        for start in range(0, len(entity_keys), BATCH):
            batch = slice(start, start + BATCH)
            keys = [prefix + k for k in entity_keys[batch]]
            expire = None if expire_ms is None else expire_ms[batch]
            rows = table.slice(start, len(keys))
            try:
                written += self.client.transaction(
                    lambda pipe, keys=keys, rows=rows, batch=batch, expire=expire: self._write_newer(
                        pipe, codec, keys, rows, event_ns[batch], created_ns[batch], expire, now_ns),
                    *keys, value_from_callable=True)
            except _CONNECTION_ERRORS as exc:
                raise self._unavailable(exc) from None
        return written

    def _write_newer(self, pipe, codec: RecordCodec, keys: list[str], table: pa.Table, event_ns: np.ndarray,
                     created_ns: np.ndarray, expire_ms: np.ndarray | None, now_ns: int) -> int:
        """Inside WATCH: queue a SET for each row newer than the stored value, and the view's newest event time."""
        old_event, old_created = codec.stamps(pipe.mget(keys))
        newer = (event_ns > old_event) | ((event_ns == old_event) & (created_ns >= old_created))
        if expire_ms is not None:
            newer &= expire_ms * 1_000_000 > now_ns  # already expired: nothing to serve
        rows = np.flatnonzero(newer)
        pipe.multi()
        if len(rows):
            values = codec.encode(table.take(rows), event_ns[rows], created_ns[rows])
            for i, value in zip(rows.tolist(), values):
                pipe.set(keys[i], value, pxat=None if expire_ms is None else int(expire_ms[i]))
            record_newest(pipe, self.prefix, codec.view.name, event_ns[rows].max())
        return len(rows)

    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailable:
        if isinstance(exc, redis.AuthenticationError):
            return OnlineStoreUnavailable(
                f"The online store at {without_password(self.url)} refused the login ({exc}): the password is wrong "
                "or the user does not exist. In a workspace, connect again (mlplat.connect()) for a fresh URL; "
                "for the embedded Redis, restart it (`mlplat down && mlplat up`) to load its users again."
            )
        return OnlineStoreUnavailable(
            f"Cannot reach the online store at {without_password(self.url)} ({exc}). Start it with `mlplat up`, "
            "or set online_store to a reachable redis:// URL."
        )

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
