"""Checking what a transformation returned: exactly the view's columns, of fitting types, inside the partition."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import SchemaError, TransformationError
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.schema import TIMESTAMP, conform, to_table


def checked(view: BatchFeatureView, output: Any, start_ns: int, end_ns: int) -> pa.Table:
    """``output`` conformed to ``view``, once it has exactly its columns, fitting types and rows in the partition."""
    where = f"The transformation of feature view {view.name!r}"  # the caller names the partition(s)
    expected = [*view.join_keys, view.timestamp_field, *filter(None, [view.created_timestamp_field]),
                *view.feature_names]
    if not isinstance(output, (pd.DataFrame, pa.Table)):
        raise TransformationError(f"{where} returned a {type(output).__name__}; return a pandas DataFrame (or an "
                                  f"Arrow table) with the columns {expected}.")
    try:
        table = to_table(output)
    except SchemaError as exc:
        raise TransformationError(f"{where} returned unusable data: {exc}") from None
    missing = [c for c in expected if c not in table.column_names]
    extra = [c for c in table.column_names if c not in expected]
    if missing or extra:
        wrong = " and ".join(filter(None, [missing and f"lacks {missing}", extra and f"has undeclared {extra}"]))
        raise TransformationError(f"{where} returned the wrong columns: it {wrong}. It must return exactly the "
                                  f"view's join keys, timestamp and features, {expected}: rename, add or drop "
                                  "columns in the transformation (a groupby key left in the index counts as "
                                  "missing: reset_index()), or change the view's schema.")
    try:
        table = conform(view, _integral_decimals(view, table.select(expected)))
    except SchemaError as exc:
        raise TransformationError(f"{where} returned the wrong type: {exc}") from None
    times = table.column(view.timestamp_field)
    start = pa.scalar(start_ns, TIMESTAMP)
    if view.lookback:  # the history a rolling feature was given is context, not this partition's output
        table = table.filter(pc.greater_equal(times, start))
        times = table.column(view.timestamp_field)
    outside = pc.or_(pc.less(times, start), pc.greater_equal(times, pa.scalar(end_ns, TIMESTAMP)))
    count = pc.sum(outside).as_py() or 0
    if count:
        example = times.filter(outside)[0].as_py()
        raise TransformationError(
            f"{where} returned {count:,} row(s) with {view.timestamp_field} outside the partition "
            f"[{pd.Timestamp(start_ns, unit='ns', tz=UTC)}, {pd.Timestamp(end_ns, unit='ns', tz=UTC)}), e.g. "
            f"{example}. Keep only the partition's rows (SQL: WHERE ts >= $start AND ts < $end), and stamp an "
            "aggregate known when the partition closes just before its end (end - 1 microsecond).")
    return table


def _integral_decimals(view: BatchFeatureView, table: pa.Table) -> pa.Table:
    """DuckDB sums integers into DECIMAL(38, 0): such a column for an integer feature becomes int64 (checked)."""
    for field in view.schema:
        column = table.column(field.name)
        if field.dtype in ("int32", "int64") and pa.types.is_decimal(column.type) and column.type.scale == 0:
            try:
                table = table.set_column(table.schema.get_field_index(field.name), field.name,
                                         column.cast(pa.int64()))
            except pa.ArrowInvalid:
                pass  # too large: conform says so
    return table
