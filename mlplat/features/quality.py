"""Data-quality expectations of feature views, checked before anything is stored.

Fields declare them (``Field("rating", "float32", not_null=True, min=0, max=5)``);
``check`` finds the rows that break them, a vectorised pass per expectation; and
``screened`` applies the view's ``on_violation`` policy on ingest and push:
``"reject"`` raises DataQualityError, ``"quarantine"`` sets the bad rows aside as
``<offline store>/_quarantine/<view>/v<version>/<ns>-<random>.parquet``, each
with the expectations it broke (``__failed``) and when (``__quarantined_at``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.errors import DataQualityError
from mlplat.features.definitions import FeatureView, condition
from mlplat.features.offline import OfflineStore
from mlplat.features.schema import TIMESTAMP, conform

FAILED, QUARANTINED_AT = "__failed", "__quarantined_at"  # no feature or key name may contain "__"
EXAMPLES = 3

# Each rule: the rows whose value breaks it (null where a value is null; filled with False after).
_BREAKS: dict[str, Callable[[pa.ChunkedArray, Any], pa.ChunkedArray]] = {
    "not_null": lambda column, _: pc.is_null(column, nan_is_null=True),
    "min": lambda column, bound: pc.less(column, bound),
    "max": lambda column, bound: pc.greater(column, bound),
    "allowed": lambda column, values: pc.and_(pc.is_valid(column),
                                              pc.invert(pc.is_in(column, value_set=pa.array(values, column.type)))),
}


class QuarantineWarning(UserWarning):
    """Some rows broke expectations and were quarantined instead of stored."""


@dataclass(frozen=True)
class Expectation:
    """One rule (``not_null``, ``min``, ``max`` or ``allowed``) on one feature."""

    feature: str
    rule: str
    value: Any

    @property
    def condition(self) -> str:
        """``>= 0``, ``not null``, ``in ['paris', 'rome']``."""
        return condition(self.rule, self.value)

    def __str__(self) -> str:
        return f"{self.feature} {self.condition}"

    def breaks(self, column: pa.ChunkedArray) -> np.ndarray:
        """A boolean mask of the values that break this rule; a null breaks only ``not_null``."""
        return _BREAKS[self.rule](column, self.value).fill_null(False).to_numpy()


def expectations(view: FeatureView) -> list[Expectation]:
    """Every expectation the view's fields declare, in schema order."""
    return [Expectation(f.name, rule, value) for f in view.schema for rule, value in f.rules().items()]


@dataclass(frozen=True, eq=False)
class Failure:
    """An expectation some rows broke: which rows (``mask``) and a few of them (``examples``)."""

    expectation: Expectation
    mask: np.ndarray
    examples: list[dict[str, Any]]

    @property
    def rows(self) -> int:
        return int(self.mask.sum())

    def shown(self) -> str:
        """The examples as ``rating=7.5 (driver_id=3), rating=9.0 (driver_id=8)``."""
        feature = self.expectation.feature
        keys = [[f"{k}={v!r}" for k, v in row.items() if k != feature] for row in self.examples]
        return ", ".join(f"{feature}={row[feature]!r} ({', '.join(key)})" for row, key in zip(self.examples, keys))

    def describe(self) -> str:
        """``rating <= 5: 2 rows, e.g. rating=7.5 (driver_id=3), rating=9.0 (driver_id=8)``."""
        return f"{self.expectation}: {_rows(self.rows)}, e.g. {self.shown()}"


@dataclass(frozen=True, eq=False)
class QualityReport:
    """What ``check`` found: the failed expectations and ``mask``, True for each bad row."""

    view: str
    version: int
    rows: int
    checked: int  # expectations checked
    failures: list[Failure]
    mask: np.ndarray

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def bad_rows(self) -> int:
        return int(self.mask.sum())

    def __str__(self) -> str:
        name = f"{self.view} v{self.version}" if self.version else self.view
        if self.ok:
            return f"{name}: all {_rows(self.rows)} meet its {self.checked} expectation(s)"
        head = f"{name}: {self.bad_rows:,} of {_rows(self.rows)} break its expectations"
        return "\n".join([head, *(f"  {f.describe()}" for f in self.failures)])

    def _repr_html_(self) -> str:
        head = str(self).split("\n", 1)[0]
        if self.ok:
            return f"<div><b>{escape(head)}</b></div>"
        cells = "".join(f"<tr><td>{escape(str(f.expectation))}</td><td>{f.rows}</td>"
                        f"<td>{escape(f.shown())}</td></tr>" for f in self.failures)
        return (f"<div><b>{escape(head)}</b><table><tr><th>expectation</th><th>rows</th><th>e.g.</th></tr>"
                f"{cells}</table></div>")


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def check(view: FeatureView, data: Any) -> QualityReport:
    """Check a DataFrame or Arrow table against the view's expectations.

    >>> report = check(p.features.get_view("driver_stats"), df)
    >>> df[~report.mask]  # the rows ingest would store
    """
    return _check(view, conform(view, data))


def _check(view: FeatureView, table: pa.Table) -> QualityReport:
    mask = np.zeros(table.num_rows, dtype=bool)
    failures = []
    rules = expectations(view)
    for expectation in rules:
        breaks = expectation.breaks(table.column(expectation.feature))
        if breaks.any():
            examples = table.select([*view.join_keys, expectation.feature]).take(np.flatnonzero(breaks)[:EXAMPLES])
            failures.append(Failure(expectation, breaks, examples.to_pylist()))
            mask |= breaks
    return QualityReport(view.name, view.version, table.num_rows, len(rules), failures, mask)


@contextlib.contextmanager
def screened(offline: OfflineStore, view: FeatureView, table: pa.Table) -> Iterator[pa.Table]:
    """The rows of a conformed ``table`` that meet the view's expectations, by its ``on_violation`` policy.

    ``"reject"`` raises DataQualityError if any row breaks one. ``"quarantine"``
    writes the bad rows aside first, removes them again if the ``with`` block
    fails, and warns how many it set aside once the block succeeds.
    """
    report = _check(view, table)
    if report.ok:
        yield table
        return
    if view.on_violation == "reject":
        raise DataQualityError(_rejection(report), report)
    path = _write_quarantine(offline, view, table, report)
    try:
        yield table.filter(pa.array(~report.mask))
    except BaseException:
        with contextlib.suppress(OSError):
            offline.fs.delete_file(path)
        raise
    warnings.warn(f"{report}\nQuarantined {_rows(report.bad_rows)}; p.features.quarantine({view.name!r}) reads "
                  "them back.", QuarantineWarning, stacklevel=4)  # the caller of ingest/push


def _rejection(report: QualityReport) -> str:
    failed = "; ".join(f.describe() for f in report.failures)
    return (f"{report.bad_rows:,} of {_rows(report.rows)} for feature view {report.view!r} break its expectations, "
            f"so nothing was stored: {failed}. Fix or drop those rows (mlplat.features.quality.check("
            f"p.features.get_view({report.view!r}), df).mask marks them), or apply the view with "
            "on_violation='quarantine' to store the good rows and set the bad ones aside.")


def _quarantine_dir(offline: OfflineStore, view: FeatureView) -> str:
    return f"{offline.root}/_quarantine/{view.name}/v{view.version}"


def _write_quarantine(offline: OfflineStore, view: FeatureView, table: pa.Table, report: QualityReport) -> str:
    """One Parquet file of the bad rows with their broken expectations; return its path."""
    reasons = [pc.if_else(pa.array(f.mask[report.mask]), str(f.expectation), pa.scalar(None, pa.string()))
               for f in report.failures]
    rows = table.filter(pa.array(report.mask))
    rows = rows.append_column(FAILED, pc.binary_join_element_wise(*reasons, "; ", null_handling="skip"))
    now_ns = time.time_ns()
    rows = rows.append_column(QUARANTINED_AT, pa.repeat(pa.scalar(now_ns, TIMESTAMP), rows.num_rows))
    folder = _quarantine_dir(offline, view)
    offline.fs.create_dir(folder, recursive=True)
    name = f"{now_ns:020d}-{uuid.uuid4().hex[:8]}.parquet"
    final = f"{folder}/{name}"
    # As in the offline store: a local file is renamed into place, an object appears whole on upload.
    staged = f"{folder}/.{name}.tmp" if isinstance(offline.fs, pafs.LocalFileSystem) else final
    try:
        pq.write_table(rows, staged, filesystem=offline.fs, compression="snappy")
        if staged != final:
            offline.fs.move(staged, final)
    except BaseException:
        with contextlib.suppress(OSError):
            offline.fs.delete_file(staged)
        raise
    return final


def read_quarantine(offline: OfflineStore, view: FeatureView) -> pd.DataFrame:
    """The quarantined rows of one view version, oldest first."""
    selector = pafs.FileSelector(_quarantine_dir(offline, view), allow_not_found=True)
    paths = sorted(info.path for info in offline.fs.get_file_info(selector) if info.type == pafs.FileType.File
                   and info.base_name.endswith(".parquet") and not info.base_name.startswith("."))
    if not paths:
        columns = [*view.join_keys, view.timestamp_field, *filter(None, [view.created_timestamp_field]),
                   *view.feature_names, FAILED, QUARANTINED_AT]
        return pd.DataFrame(columns=columns)
    return ds.dataset(paths, format="parquet", filesystem=offline.fs).to_table().to_pandas()
