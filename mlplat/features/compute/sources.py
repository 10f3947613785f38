"""A batch view's sources: which files they are, and reading the rows of one partition's window.

A source is a path or glob of Parquet or CSV files (local, or one file or folder on an
object store), or a DataFrame given to ``compute``. Local Parquet files are indexed once
per compute by the event-time span their footers record, so each partition opens only
the files that can hold its rows.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from mlplat.errors import InvalidArgument, TransformationError
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.definitions import _check_name

_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def source_tables(view: BatchFeatureView, given: Any) -> dict[str, Any]:
    """The view's sources, with DataFrames (or paths) given to ``compute`` in place of theirs."""
    if given is None:
        return dict(view.sources)
    if not isinstance(given, Mapping):
        if len(view.sources) != 1:
            raise InvalidArgument(f"compute({view.name!r}, sources=...): name the table(s) the query reads, "
                                  "e.g. sources={'trips': df}.")
        given = {next(iter(view.sources)): given}
    if view.language == "python" and set(given) != set(view.sources):
        raise InvalidArgument(f"compute({view.name!r}, sources=...): the transformation reads "
                              f"{next(iter(view.sources))!r}; pass one DataFrame or path.")
    for name, value in given.items():
        _check_name("Source table", name)
        if not isinstance(value, (str, os.PathLike, pd.DataFrame, pa.Table)):
            raise InvalidArgument(f"compute({view.name!r}, sources=...): {name!r} is a {type(value).__name__}; "
                                  "give a pandas DataFrame, an Arrow table or a path.")
    return {**view.sources, **{name: str(v) if isinstance(v, os.PathLike) else v for name, v in given.items()}}


def read_window(view: BatchFeatureView, source: Any, low: pd.Timestamp, high: pd.Timestamp,
                use_threads: bool = True) -> pd.DataFrame:
    """The source rows whose event time is in ``[low, high)``, as a pandas DataFrame.

    ``use_threads=False`` where partitions already run side by side, one per core.
    """
    column = view.source_time
    if isinstance(source, pa.Table):
        source = source.to_pandas()
    if isinstance(source, pd.DataFrame):
        if column not in source.columns:
            raise TransformationError(_no_time_column(view, "the DataFrame given", list(source.columns)))
        times = pd.to_datetime(source[column], utc=True)
        return source.loc[((times >= low) & (times < high)).to_numpy()].reset_index(drop=True)
    if isinstance(source, SourceFiles):
        source, files = source.path, source.overlapping(low.value, high.value)
    else:
        files = find_files(view, source)
    dataset = ds.dataset(files, format="csv" if source.lower().endswith(".csv") else "parquet")
    if column not in dataset.schema.names:
        raise TransformationError(_no_time_column(view, source, dataset.schema.names))
    kind = dataset.schema.field(column).type
    if not pa.types.is_timestamp(kind):
        raise TransformationError(f"Column {column!r} of {source} has type {kind}, not a timestamp, so feature view "
                                  f"{view.name!r} cannot pick a partition's rows; store it as a timestamp.")

    def bound(moment: pd.Timestamp) -> pa.Scalar:  # in the column's unit and zone (none: UTC values)
        return pa.scalar(moment.value // _NS_PER[kind.unit], kind)

    field = ds.field(column)
    rows = dataset.to_table(filter=(field >= bound(low)) & (field < bound(high)), use_threads=use_threads)
    return rows.to_pandas(use_threads=use_threads)


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """Local Parquet files of a source and the event-time span each holds (from its footer statistics)."""

    path: str  # as the view names it
    files: list[str]
    spans: list[tuple[int, int] | None]  # (min, max) ns, None where the footer does not say

    def overlapping(self, low_ns: int, high_ns: int) -> list[str]:
        """The files that may hold times in ``[low, high)`` (at least one, for the schema)."""
        found = [f for f, span in zip(self.files, self.spans) if span is None or (span[1] >= low_ns and span[0] < high_ns)]
        return found or self.files[:1]


def indexed(view: BatchFeatureView, path: str) -> str | SourceFiles:
    """``path`` with each file's event-time span, read once per compute rather than once per partition."""
    import pyarrow.parquet as pq

    if "://" in path or path.lower().endswith(".csv"):
        return path
    files = find_files(view, path)
    if isinstance(files, str):
        files = sorted(str(f) for f in Path(files).rglob("*.parquet")) if Path(files).is_dir() else [files]
    if not files:
        raise TransformationError(f"No Parquet file in {path}, the source of feature view {view.name!r}.")
    return SourceFiles(path, files, [_span(pq.read_metadata(f), view.source_time) for f in files])


def _span(meta: Any, column: str) -> tuple[int, int] | None:
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names or meta.num_row_groups == 0:
        return None
    lows, highs = [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(names.index(column)).statistics
        if stats is None or not stats.has_min_max or not isinstance(stats.min, datetime):
            return None
        lows.append(stats.min)
        highs.append(stats.max)

    def ns(moment: datetime) -> int:  # a zone-less time holds UTC values
        return pd.Timestamp(moment if moment.tzinfo else moment.replace(tzinfo=UTC)).value

    return ns(min(lows)), ns(max(highs))


def _no_time_column(view: BatchFeatureView, where: str, columns: list[str]) -> str:
    return (f"The source {where} of feature view {view.name!r} has no column {view.source_time!r} to pick a "
            f"partition's rows by (it has {columns}); define the view with source_timestamp_field='...'.")


def find_files(view: BatchFeatureView, path: str) -> str | list[str]:
    """The files a glob matches, or ``path`` itself (a file or folder); TransformationError when there is none."""
    if "://" in path:
        return path  # a file or folder on an object store (globs are local only)
    if glob.has_magic(path):
        found = sorted(glob.glob(path, recursive=True))
        if not found:
            raise TransformationError(f"No file matches {path}, the source of feature view {view.name!r}.")
        return found
    if not Path(path).exists():
        raise TransformationError(f"No file or folder at {path}, the source of feature view {view.name!r}.")
    return path
