"""The offline log of accepted stream events: Parquet under the offline store.

Layout (one file per processed batch and event day, named by the batch's first
entry id, so a batch processed again after a crash replaces its own file)::

    <offline store>/_events/<view>/v<version>/date=YYYY-MM-DD/<first entry id>.parquet

Columns: ``_id`` (the entry id), ``_a``/``_b`` (its stream order), the join keys
(text, as sent), the timestamp field (ns, UTC), each summed/min/max/mean/last
column as the float64 the consumer applied, and each distinct-counted column as
text. Readers drop repeated ``_id`` s, so overlapping files never count twice.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.features.offline import OfflineStore
from mlplat.features.schema import TIMESTAMP
from mlplat.streaming.definitions import StreamFeatureView
from mlplat.streaming.events import Events

DAY_NS = 86_400 * 10**9


def text_column(view: StreamFeatureView, column: str) -> str:
    """The log column holding a distinct-counted column's text (its own name unless it is also summed)."""
    return f"{column}_text" if column in view.value_columns else column


def log_schema(view: StreamFeatureView) -> pa.Schema:
    fields = [pa.field("_id", pa.string()), pa.field("_a", pa.int64()), pa.field("_b", pa.int64())]
    fields += [pa.field(k, pa.string()) for k in view.join_keys]
    fields.append(pa.field(view.timestamp_field, TIMESTAMP))
    fields += [pa.field(c, pa.float64()) for c in view.value_columns]
    fields += [pa.field(text_column(view, c), pa.string()) for c in view.distinct_columns]
    return pa.schema(fields)


class EventLog:
    """Appends batches of accepted events and reads them back."""

    def __init__(self, offline: OfflineStore):
        self.fs, self.root = offline.fs, f"{offline.root}/_events"

    def folder(self, view: StreamFeatureView) -> str:
        return f"{self.root}/{view.name}/v{view.version}"

    def table(self, view: StreamFeatureView, events: Events) -> pa.Table:
        arrays = [pa.array(events.ids, pa.string()), pa.array(events.order_a), pa.array(events.order_b)]
        arrays += [pa.array(column, pa.string()) for column in events.key_columns]
        arrays.append(pa.array(events.ts, pa.int64()).cast(TIMESTAMP))
        arrays += [pa.array(events.values[:, j]) for j in range(events.values.shape[1])]
        arrays += [pa.array(events.texts[c], pa.string()) for c in view.distinct_columns]
        return pa.Table.from_arrays(arrays, schema=log_schema(view))

    def write(self, view: StreamFeatureView, batch_id: str, events: Events) -> list[str]:
        """Write a batch's accepted events, one file per event day; writing the batch again replaces its files."""
        if not len(events):
            return []
        table = self.table(view, events)
        days = events.ts // DAY_NS
        name = batch_id.replace("/", "_").replace("-", "_")
        written = []
        for day in np.unique(days).tolist():
            part = table if len(written) == 0 and (days == day).all() else table.filter(pa.array(days == day))
            folder = f"{self.folder(view)}/date={datetime.fromtimestamp(day * 86_400, UTC):%Y-%m-%d}"
            self.fs.create_dir(folder, recursive=True)
            final = f"{folder}/{name}.parquet"
            staged = final if not isinstance(self.fs, pafs.LocalFileSystem) else f"{folder}/.{name}.tmp"
            pq.write_table(part, staged, filesystem=self.fs, compression="snappy", use_dictionary=False)
            if staged != final:
                self.fs.move(staged, final)
            written.append(final)
        return written

    def remove(self, paths: list[str]) -> None:
        """Delete log files (those an earlier try at a batch wrote and the last try did not)."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(path)

    def read(self, view: StreamFeatureView, start_ns: int | None = None, end_ns: int | None = None) -> pa.Table:
        """Logged events with ``start_ns <= event time < end_ns``, each entry once, in stream order."""
        first = None if start_ns is None else datetime.fromtimestamp(start_ns // DAY_NS * 86_400, UTC)
        last = None if end_ns is None else datetime.fromtimestamp(end_ns // DAY_NS * 86_400, UTC)
        selector = pafs.FileSelector(self.folder(view), recursive=True, allow_not_found=True)
        paths = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name.startswith(".") or \
                    not info.base_name.endswith(".parquet"):
                continue
            day = info.path.rsplit("/", 2)[-2].removeprefix("date=")
            if (first and day < f"{first:%Y-%m-%d}") or (last and day > f"{last:%Y-%m-%d}"):
                continue
            paths.append(info.path)
        schema = log_schema(view)
        if not paths:
            return schema.empty_table()
        table = ds.dataset(sorted(paths), schema=schema, format="parquet", filesystem=self.fs).to_table()
        ts = table.column(view.timestamp_field)
        if start_ns is not None:
            table = table.filter(pc.greater_equal(ts, pa.scalar(start_ns, TIMESTAMP)))
            ts = table.column(view.timestamp_field)
        if end_ns is not None:
            table = table.filter(pc.less(ts, pa.scalar(end_ns, TIMESTAMP)))
        order = pc.sort_indices(table, [("_a", "ascending"), ("_b", "ascending")])
        table = table.take(order)
        ids = table.column("_id").to_numpy(zero_copy_only=False)
        if len(ids) > 1:
            repeated = np.r_[False, ids[1:] == ids[:-1]]
            if repeated.any():
                table = table.filter(pa.array(~repeated))
        return table

    def frame(self, view: StreamFeatureView, start_ns: int | None = None, end_ns: int | None = None) -> pd.DataFrame:
        return self.read(view, start_ns, end_ns).to_pandas()
