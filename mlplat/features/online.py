"""The online store: one packed binary value per (view version, entity) in Redis.

Key:   ``<prefix>:<view>:<version>:<entity key>``, the entity key being the
       join-key values as text, joined by ``\\x1f`` when there are several.
Value: a little-endian packed record (numpy structured dtype, no padding)::

           int64 event_ns | int64 created_ns | uint8 valid[n] | one fixed-width slot per numeric feature
           followed, for views with string features, by uint32 length + UTF-8 bytes per string.

A read is one ``MGET`` for every entity of every view, decoded by a single
``np.frombuffer`` per view: no per-value Python objects until ``to_dict()``.
Each key expires (``PXAT``) when its value passes the view's TTL, so expired
entities read as missing without a check on the hot path. Writes compare with
what is stored and never replace a newer value with an older one, in
``MULTI``/``EXEC`` batches, so re-running a materialisation is harmless.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from mlplat.errors import OnlineStoreUnavailable
from mlplat.features.definitions import FeatureView

_NUMPY = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "u1"}
_HEADER = np.dtype([("event_ns", "<i8"), ("created_ns", "<i8")])
BATCH = 5000


class RecordCodec:
    """Packs rows of one view version into bytes and back."""

    def __init__(self, view: FeatureView):
        self.view = view
        self.numeric = [f for f in view.schema if f.dtype != "string"]
        self.strings = [f for f in view.schema if f.dtype == "string"]
        fields = [("event_ns", "<i8"), ("created_ns", "<i8"), ("valid", "u1", (len(view.schema),))]
        fields += [(f"f_{f.name}", _NUMPY[f.dtype]) for f in self.numeric]
        self.dtype = np.dtype(fields)
        self.position = {f.name: i for i, f in enumerate(view.schema)}

    def encode(self, table: pa.Table, event_ns: np.ndarray, created_ns: np.ndarray) -> list[bytes]:
        """One packed value per row of ``table`` (which holds the view's features)."""
        n = table.num_rows
        records = np.zeros(n, dtype=self.dtype)
        records["event_ns"] = event_ns
        records["created_ns"] = created_ns
        for field in self.view.schema:
            column = table.column(field.name)
            valid = ~column.is_null().to_numpy(zero_copy_only=False)
            records["valid"][:, self.position[field.name]] = valid
            if field.dtype != "string":
                filler = pa.scalar(False if field.dtype == "bool" else 0, column.type)
                records[f"f_{field.name}"] = column.fill_null(filler).to_numpy(zero_copy_only=False)
        size = self.dtype.itemsize
        raw = records.tobytes()
        values = [raw[i * size:(i + 1) * size] for i in range(n)]
        if self.strings:
            texts = [table.column(f.name).to_pylist() for f in self.strings]
            for i in range(n):
                tail = b"".join(_pack_text(column[i]) for column in texts)
                values[i] += tail
        return values

    def decode(self, values: list[bytes | None], features: tuple[str, ...]) -> dict[str, list]:
        """Columns of feature values (None where missing) from stored values."""
        size = self.dtype.itemsize
        present = [v is not None for v in values]
        blank = b"\0" * size  # valid flags all zero: every feature null
        records = np.frombuffer(b"".join(v[:size] if v is not None else blank for v in values), dtype=self.dtype)
        valid = records["valid"]
        out: dict[str, list] = {}
        texts = self._decode_texts(values) if self.strings and any(present) else {}
        for feature in features:
            flags = valid[:, self.position[feature]]
            if feature in texts:
                column = texts[feature]
            else:
                column = records[f"f_{feature}"].tolist()
                if self.view.field(feature).dtype == "bool":
                    column = [bool(x) for x in column]
            if not flags.all():
                column = [x if ok else None for x, ok in zip(column, flags)]
            out[feature] = column
        return out

    def _decode_texts(self, values: list[bytes | None]) -> dict[str, list]:
        size = self.dtype.itemsize
        columns: dict[str, list] = {f.name: [] for f in self.strings}
        for value in values:
            offset = size
            for field in self.strings:
                if value is None:
                    columns[field.name].append(None)
                    continue
                (length,) = struct.unpack_from("<I", value, offset)
                columns[field.name].append(value[offset + 4:offset + 4 + length].decode())
                offset += 4 + length
        return columns

    def stamps(self, values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """(event_ns, created_ns) of stored values; int64 min where absent."""
        blank = np.array([(np.iinfo(np.int64).min,) * 2], dtype=_HEADER).tobytes()
        head = np.frombuffer(b"".join(v[:16] if v is not None else blank for v in values), dtype=_HEADER)
        return head["event_ns"], head["created_ns"]


def _pack_text(text: str | None) -> bytes:
    data = b"" if text is None else text.encode()
    return struct.pack("<I", len(data)) + data


def entity_key_strings(columns: list[list[Any]] | list[np.ndarray]) -> list[str]:
    """Join-key values as the text used in online keys."""
    if len(columns) == 1:
        return [str(v) for v in columns[0]]
    return ["\x1f".join(map(str, parts)) for parts in zip(*columns)]


@dataclass
class RedisOnlineStore:
    """Reads and writes packed feature records in Redis."""

    url: str
    prefix: str = "mlp"

    @cached_property
    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)

    def key_prefix(self, view: FeatureView) -> str:
        return f"{self.prefix}:{view.name}:{view.version}:"

    def mget(self, keys: list[str]) -> list[bytes | None]:
        with _redis_errors(self.url):
            return self.client.mget(keys) if keys else []

    def write(self, view: FeatureView, codec: RecordCodec, entity_keys: list[str], table: pa.Table,
              event_ns: np.ndarray, created_ns: np.ndarray, ttl_ns: int | None, now_ns: int) -> int:
        """Store rows that are newer than what is stored; return how many were written."""
        written = 0
        prefix = self.key_prefix(view)
        for start in range(0, len(entity_keys), BATCH):
            stop = start + BATCH
            keys = [prefix + k for k in entity_keys[start:stop]]
            old_event, old_created = codec.stamps(self.mget(keys))
            ev, cr = event_ns[start:stop], created_ns[start:stop]
            newer = (ev > old_event) | ((ev == old_event) & (cr >= old_created))
            expire = None if ttl_ns is None else (ev + ttl_ns) // 1_000_000
            if expire is not None:
                newer &= expire * 1_000_000 > now_ns  # already expired: nothing to serve
            rows = np.flatnonzero(newer)
            if not len(rows):
                continue
            values = codec.encode(table.slice(start, len(keys)).take(rows), ev[rows], cr[rows])
            with _redis_errors(self.url):
                pipe = self.client.pipeline(transaction=True)
                for i, value in zip(rows.tolist(), values):
                    if expire is None:
                        pipe.set(keys[i], value)
                    else:
                        pipe.set(keys[i], value, pxat=int(expire[i]))
                pipe.execute()
            written += len(rows)
        return written

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()


@contextlib.contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    """Turn connection failures into OnlineStoreUnavailable with a way out."""
    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise OnlineStoreUnavailable(
            f"Cannot reach the online store at {url} ({exc}). Start it with `mlplat up`, "
            "or set online_store to a reachable redis:// URL."
        ) from None
