"""Check incoming data against a FeatureView and convert it to its Arrow schema.

Validation happens before anything is written: a bad column, dtype or
timestamp raises a SchemaError naming the column and the fix.
"""

from __future__ import annotations

import difflib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import DtypeMismatch, MissingColumnError, SchemaError
from mlplat.features.definitions import FeatureView

TIMESTAMP = pa.timestamp("ns", tz="UTC")
ARROW_TYPES = {
    "float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64(),
    "bool": pa.bool_(), "string": pa.string(),
}
# Which incoming Arrow types may be stored as each declared dtype.
_ACCEPTS = {
    "float32": (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal),
    "float64": (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal),
    "int32": (pa.types.is_integer, pa.types.is_floating),  # floats only if every value is integral
    "int64": (pa.types.is_integer, pa.types.is_floating),
    "bool": (pa.types.is_boolean,),
    "string": (pa.types.is_string, pa.types.is_large_string),
}


def arrow_schema(view: FeatureView) -> pa.Schema:
    """The stored schema: join keys (as given), timestamps (ns, UTC), then features."""
    fields = [pa.field(view.timestamp_field, TIMESTAMP, nullable=False)]
    if view.created_timestamp_field:
        fields.append(pa.field(view.created_timestamp_field, TIMESTAMP))
    fields += [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in view.schema]
    return pa.schema(fields)


def to_table(data: Any) -> pa.Table:
    """A pyarrow Table from a pandas DataFrame or Table."""
    import pandas as pd

    if not isinstance(data, (pa.Table, pd.DataFrame)):
        raise SchemaError(f"Expected a pandas DataFrame or pyarrow Table, got {type(data).__name__}.")
    names = [str(c) for c in (data.column_names if isinstance(data, pa.Table) else data.columns)]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise SchemaError(f"The data has the column(s) {twice} more than once; keep one of each.")
    if isinstance(data, pa.Table):
        return data
    try:
        return pa.Table.from_pandas(data, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:  # an int beyond int64: OverflowError
        raise SchemaError(f"A column holds mixed or unsupported values ({exc}); give each column one type.") from None
    except UnicodeEncodeError as exc:
        raise SchemaError(f"A text value holds {exc.object[exc.start:exc.end]!r}, which is not valid Unicode "
                          "(a lone surrogate); fix or drop it.") from None


def conform(view: FeatureView, data: Any) -> pa.Table:
    """Validate ``data`` for ``view`` and return it in the view's stored schema."""
    table = to_table(data)
    required = [*view.join_keys, view.timestamp_field, *filter(None, [view.created_timestamp_field])]
    required += view.feature_names
    missing = [c for c in required if c not in table.column_names]
    if missing:
        hints = [f"{m!r} (did you mean {h[0]!r}?)" if (h := difflib.get_close_matches(m, table.column_names, n=1))
                 else repr(m) for m in missing]
        raise MissingColumnError(
            f"Data for feature view {view.name!r} lacks column(s) {', '.join(hints)}; it needs "
            f"{required}. Rename or add the columns, then try again."
        )
    columns = [_key_column(view, k, table.column(k)) for k in view.join_keys]
    columns.append(timestamp_column(table.column(view.timestamp_field), view.timestamp_field, f"view {view.name!r}"))
    if view.created_timestamp_field:
        created = table.column(view.created_timestamp_field)
        columns.append(_as_timestamp(created, view.created_timestamp_field, f"view {view.name!r}"))
    for field in view.schema:
        columns.append(_feature_column(view, field.name, field.dtype, table.column(field.name)))
    schema = pa.schema([pa.field(k, columns[i].type) for i, k in enumerate(view.join_keys)] + list(arrow_schema(view)))
    return pa.Table.from_arrays(columns, schema=schema)


def _key_column(view: FeatureView, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DtypeMismatch(
            f"Join key {name!r} of view {view.name!r} has type {column.type}; join keys must be integers or "
            "strings. Convert it, e.g. df[name] = df[name].astype('int64')."
        )
    if column.null_count:
        raise SchemaError(f"Join key {name!r} of view {view.name!r} has {column.null_count} null value(s); drop or fill those rows.")
    # One key type per kind, so files from different ingests always concatenate.
    return column.cast(pa.int64() if pa.types.is_integer(column.type) else pa.string())


def timestamp_column(column: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    """A non-null timestamp column as ns UTC (naive times are taken as UTC)."""
    column = _as_timestamp(column, name, where)
    if column.null_count:
        raise SchemaError(f"Timestamp column {name!r} of {where} has {column.null_count} null value(s); every row needs a time.")
    return column


def _as_timestamp(column: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    if not pa.types.is_timestamp(column.type):
        raise DtypeMismatch(
            f"Column {name!r} of {where} has type {column.type}, not a timestamp; convert it with "
            f"pd.to_datetime(df[{name!r}], utc=True)."
        )
    if column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    try:
        return column.cast(TIMESTAMP)
    except pa.ArrowInvalid:  # beyond what int64 nanoseconds hold
        raise DtypeMismatch(f"Column {name!r} of {where} has times outside 1678-2261, which mlplat cannot store "
                            "(nanosecond timestamps); fix or drop those rows.") from None


def _feature_column(view: FeatureView, name: str, dtype: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    target = ARROW_TYPES[dtype]
    if pa.types.is_null(column.type):  # an all-null column
        return pa.chunked_array([pa.nulls(len(column), target)]) if len(column) else column.cast(target)
    if not any(accepts(column.type) for accepts in _ACCEPTS[dtype]):
        raise DtypeMismatch(
            f"Feature {view.name}:{name} is declared {dtype} but the data has type {column.type}; "
            f"convert the column (df[{name!r}].astype(...)) or change the Field's dtype."
        )
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DtypeMismatch(
            f"Feature {view.name}:{name} is declared {dtype} but some values do not fit ({exc}); "
            "round or convert them first."
        ) from None
