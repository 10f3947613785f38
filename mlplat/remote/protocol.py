"""The wire format between the SDK and ``mlplat server``: JSON for structure, Arrow IPC for tables, no pickle.

A message is ``<8-byte length><JSON>`` followed by ``<8-byte length><bytes>`` blobs. In the JSON, plain
values are themselves; anything else is a one-key object naming its kind:

- ``{"$frame": i}``: blob ``i`` is an Arrow IPC stream of a pandas DataFrame (``$table``: a ``pyarrow.Table``);
- ``{"$array": i}``: blob ``i`` is a ``.npy`` file (read with ``allow_pickle=False``);
- ``{"$time": iso}``, ``{"$delta": seconds}``, ``{"$tuple": [...]}``, ``{"$map": [[key, value], ...]}``;
- ``{"$view": spec}``, ``{"$entity": spec}``: feature definitions as the registry stores them;
- ``{"$object": "module:Class", "fields": {...}}`` (a dataclass) and ``{"$list": "module:Class", "items": [...]}``
  (a list subclass): results from the server. Only classes of the ``mlplat`` package are rebuilt, and only
  when the reader allows objects (the SDK reading the server's answers; the server never rebuilds them).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import json
import struct
from datetime import date, datetime, timedelta
from pathlib import PurePath
from typing import Any

from mlplat.errors import InvalidArgument

CONTENT_TYPE = "application/vnd.mlplat"
_LENGTH = struct.Struct(">Q")


def encode(value: Any) -> bytes:
    """``value`` as one message."""
    blobs: list[Any] = []
    head = json.dumps(_plain(value, blobs), separators=(",", ":")).encode()
    parts = [_LENGTH.pack(len(head)), head]
    for blob in blobs:
        parts += [_LENGTH.pack(len(blob)), blob]
    return b"".join(parts)


def decode(message: bytes, objects: bool = False) -> Any:
    """The value of one message; ``objects`` rebuilds mlplat dataclasses (only for answers from the server)."""
    view = memoryview(message)
    try:
        (size,), offset = _LENGTH.unpack_from(view), _LENGTH.size
        head = json.loads(bytes(view[offset:offset + size]))
        offset += size
        blobs = []
        while offset < len(view):
            (size,) = _LENGTH.unpack_from(view, offset)
            offset += _LENGTH.size
            if offset + size > len(view):
                raise ValueError("a blob runs past the end")
            blobs.append(view[offset:offset + size])
            offset += size
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"The request body is not an mlplat message ({exc}); send what mlplat.connect() "
                              "sends.") from None
    return _value(head, blobs, objects)


def _plain(value: Any, blobs: list[Any]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, blobs)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else {"$float": str(value)}
    if isinstance(value, (datetime, date)):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$delta": value.total_seconds()}
    if isinstance(value, PurePath):
        return str(value)
    kind = type(value).__module__.partition(".")[0]
    if kind == "numpy":
        return _numpy(value, blobs)
    if kind == "pandas":
        return _pandas(value, blobs)
    if kind == "pyarrow":
        blobs.append(_ipc(value))
        return {"$table": len(blobs) - 1}
    definition = _definition(value)
    if definition:
        return {definition: _plain(value.to_dict(), blobs)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name), blobs) for f in dataclasses.fields(value)}
        return {"$object": _class_name(value), "fields": fields}
    if isinstance(value, list) and type(value) is not list:
        return {"$list": _class_name(value), "items": [_plain(v, blobs) for v in value]}
    if isinstance(value, (list, set, frozenset)):
        return [_plain(v, blobs) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [_plain(v, blobs) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _plain(v, blobs) for k, v in value.items()}
        return {"$map": [[_plain(k, blobs), _plain(v, blobs)] for k, v in value.items()]}
    raise InvalidArgument(f"A {type(value).__name__} cannot be sent to the platform server; send plain values, "
                          "DataFrames, arrays or feature definitions.")


def _definition(value: Any) -> str | None:
    from mlplat.features.definitions import Entity, FeatureView

    return "$view" if isinstance(value, FeatureView) else "$entity" if isinstance(value, Entity) else None


def _numpy(value: Any, blobs: list[Any]) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_plain(v, blobs) for v in value.tolist()]
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        blobs.append(buffer.getvalue())
        return {"$array": len(blobs) - 1}
    if isinstance(value, np.datetime64):
        import pandas as pd

        return _plain(pd.Timestamp(value).to_pydatetime(), blobs)
    return _plain(value.item(), blobs)


def _pandas(value: Any, blobs: list[Any]) -> Any:
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, pd.Timestamp):
        return {"$time": value.isoformat()} if value is not pd.NaT else None
    if isinstance(value, pd.Timedelta):
        return {"$delta": value.total_seconds()}
    if isinstance(value, pd.Series):
        return _plain(value.to_numpy(), blobs)
    if isinstance(value, pd.DataFrame):
        blobs.append(_ipc(pa.Table.from_pandas(value, preserve_index=not isinstance(value.index, pd.RangeIndex))))
        return {"$frame": len(blobs) - 1}
    if value is pd.NA or value is pd.NaT:
        return None
    raise InvalidArgument(f"A pandas {type(value).__name__} cannot be sent to the platform server.")


def _ipc(table: Any) -> Any:
    """``table`` as an Arrow IPC stream: a pyarrow Buffer, which :func:`encode` joins in without copying it first."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _class_name(value: Any) -> str:
    return f"{type(value).__module__}:{type(value).__qualname__}"


def _value(data: Any, blobs: list[memoryview], objects: bool) -> Any:
    if isinstance(data, list):
        return [_value(v, blobs, objects) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) in (1, 2) and next(iter(data), "").startswith("$"):
        return _tagged(data, blobs, objects)
    return {k: _value(v, blobs, objects) for k, v in data.items()}


def _tagged(data: dict[str, Any], blobs: list[memoryview], objects: bool) -> Any:
    tag, payload = next(iter(data.items()))
    if tag in ("$frame", "$table", "$array"):
        blob = _blob(blobs, payload)
        return _array(blob) if tag == "$array" else _table(blob, pandas=tag == "$frame")
    if tag == "$time":
        return datetime.fromisoformat(payload)
    if tag == "$delta":
        return timedelta(seconds=payload)
    if tag == "$float":
        return float(payload)
    if tag == "$tuple":
        return tuple(_value(payload, blobs, objects))
    if tag == "$map":
        return {_hashable(_value(k, blobs, objects)): _value(v, blobs, objects) for k, v in payload}
    if tag in ("$view", "$entity"):
        from mlplat.features.definitions import Entity, FeatureView

        spec = _value(payload, blobs, objects)
        try:
            return FeatureView.from_dict(spec) if tag == "$view" else Entity(**spec)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"A feature definition in the message is malformed ({exc!r}); send the Entity "
                                  "or FeatureView itself.") from None
    if tag in ("$object", "$list") and objects:
        cls = _mlplat_class(payload)
        if tag == "$list":
            return cls(_value(data["items"], blobs, objects))
        value = object.__new__(cls)  # as the server had it: no __init__ checks run again
        for name, field_value in _value(data["fields"], blobs, objects).items():
            object.__setattr__(value, name, field_value)
        return value
    raise InvalidArgument(f"{tag!r} values are not accepted here; send plain values, DataFrames, arrays or "
                          "feature definitions.")


def _blob(blobs: list[memoryview], index: Any) -> memoryview:
    if not isinstance(index, int) or not 0 <= index < len(blobs):
        raise InvalidArgument(f"The message refers to a blob {index!r} it does not carry.")
    return blobs[index]


def _table(blob: memoryview, pandas: bool) -> Any:
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
    except pa.ArrowInvalid as exc:
        raise InvalidArgument(f"A table in the message is not Arrow IPC: {exc}") from None
    return table.to_pandas() if pandas else table


def _array(blob: memoryview) -> Any:
    import numpy as np

    try:
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except ValueError as exc:
        raise InvalidArgument(f"An array in the message is not a .npy array: {exc}") from None


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _mlplat_class(name: Any) -> type:
    module, _, qualname = str(name).partition(":")
    if module.partition(".")[0] != "mlplat" or not qualname:
        raise InvalidArgument(f"{name!r} is not an mlplat type.")
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value
