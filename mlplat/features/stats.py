"""How fresh a feature view is, and summary statistics of its features, from the offline store.

Both read as little as they can: freshness reads only the timestamp column of
the newest date partition; statistics read a bounded window of recent events
(by default the last seven days before the newest one), so they stay fast on
views of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from html import escape

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import InvalidArgument
from mlplat.features.definitions import FeatureView
from mlplat.features.offline import OfflineStore, StoredFile
from mlplat.features.registry import Registry


@dataclass(frozen=True)
class Freshness:
    """How current one view version is offline and online.

    ``latest_event``: the newest event timestamp stored offline; ``last_ingest``:
    when the newest file arrived; ``materialized_until``: the event time
    materialisation has reached (the watermark); ``unmaterialized_files``: files
    ingested since the last materialisation. Timestamps are UTC, None when
    there is nothing yet.
    """

    view: str
    version: int
    latest_event: pd.Timestamp | None
    last_ingest: pd.Timestamp | None
    materialized_until: pd.Timestamp | None
    unmaterialized_files: int
    checked_at: pd.Timestamp

    @property
    def age(self) -> pd.Timedelta | None:
        """How old the newest event was when this was checked."""
        return None if self.latest_event is None else self.checked_at - self.latest_event

    def _repr_html_(self) -> str:
        facts = {"latest event": self.latest_event, "age": self.age, "last ingest": self.last_ingest,
                 "materialised until": self.materialized_until,
                 "files not yet materialised": self.unmaterialized_files}
        rows = "".join(f"<tr><td>{name}</td><td>{escape(_readable(value))}</td></tr>" for name, value in facts.items())
        return f"<div><b>freshness of {escape(self.view)} v{self.version}</b><table>{rows}</table></div>"


@dataclass(frozen=True)
class ViewStats:
    """Summary statistics of a view's features over the rows with ``start <= event time <= end``.

    ``features`` has one row per feature: dtype, null_fraction, mean, std (ddof=1),
    min, max (numbers and booleans) and distinct (strings); missing where a
    statistic does not apply. Nulls and NaNs count as missing, as in pandas.
    """

    view: str
    version: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    rows: int
    features: pd.DataFrame

    def _repr_html_(self) -> str:
        span = "no rows yet" if self.end is None else f"{self.rows} rows from {_readable(self.start)} to {_readable(self.end)}"
        return (f"<div><b>statistics of {escape(self.view)} v{self.version}</b>: {escape(span)}"
                f"{self.features.to_html(float_format=lambda x: f'{x:.4g}', na_rep='')}</div>")


def freshness(offline: OfflineStore, registry: Registry, view: FeatureView) -> Freshness:
    """The newest event and ingest of ``view`` offline, and how far materialisation has got."""
    files = offline.files(view)
    mark = registry.watermark(view)
    newest_ns = max((f.ingest_ns for f in files), default=None)
    pending = [f for f in files if mark is None or f.ingest_ns > mark.ingest_ns]
    return Freshness(view.name, view.version, _timestamp(latest_event_ns(offline, view, files)),
                     _timestamp(newest_ns), _timestamp(mark.event_end_ns if mark else None), len(pending),
                     pd.Timestamp.now(tz="UTC"))


def latest_event_ns(offline: OfflineStore, view: FeatureView, files: list[StoredFile] | None = None) -> int | None:
    """The newest event timestamp (ns) of ``view`` offline, reading only its newest date partition."""
    files = offline.files(view) if files is None else files
    if not files:
        return None
    newest_day = max(f.day for f in files)
    table = offline.read(view, [view.timestamp_field], files=[f for f in files if f.day == newest_day])
    return pc.max(table.column(view.timestamp_field)).cast(pa.int64()).as_py()


def view_stats(offline: OfflineStore, view: FeatureView, window: timedelta | None = timedelta(days=7)) -> ViewStats:
    """Statistics of ``view``'s features over events within ``window`` of its newest one (None: every row)."""
    if window is not None and (not isinstance(window, timedelta) or window <= timedelta(0)):
        raise InvalidArgument(f"window must be a positive timedelta or None (every row), not {window!r}.")
    end_ns = latest_event_ns(offline, view)
    start_ns = None if window is None or end_ns is None else end_ns - int(window.total_seconds() * 1e9)
    table = offline.read(view, [view.timestamp_field, *view.feature_names], start_ns, end_ns)
    features = pd.DataFrame([_column_stats(table.column(f.name), f.dtype) for f in view.schema],
                            index=pd.Index(view.feature_names, name="feature")).astype({"distinct": "Int64"})
    if start_ns is None and table.num_rows:  # every row: the window starts at the oldest event
        start_ns = pc.min(table.column(view.timestamp_field)).cast(pa.int64()).as_py()
    return ViewStats(view.name, view.version, _timestamp(start_ns), _timestamp(end_ns), table.num_rows, features)


def _column_stats(column: pa.ChunkedArray, dtype: str) -> dict[str, object]:
    if pa.types.is_floating(column.type):  # NaN is missing, as in pandas
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    rows = len(column)
    found: dict[str, object] = {"dtype": dtype, "null_fraction": column.null_count / rows if rows else np.nan,
                                "mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan, "distinct": np.nan}
    if dtype == "string":
        found["distinct"] = pc.count_distinct(column, mode="only_valid").as_py()
        return found
    numbers = column.cast(pa.float64())
    extremes = pc.min_max(numbers)
    for name, value in {"mean": pc.mean(numbers), "std": pc.stddev(numbers, ddof=1),
                        "min": extremes["min"], "max": extremes["max"]}.items():
        found[name] = np.nan if value.as_py() is None else value.as_py()
    return found


def _timestamp(ns: int | None) -> pd.Timestamp | None:
    return None if ns is None else pd.Timestamp(ns, unit="ns", tz="UTC")


def _readable(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, pd.Timedelta):
        return str(value.floor("s"))
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)
