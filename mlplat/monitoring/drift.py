"""Feature and prediction drift: PSI and Kolmogorov-Smirnov against reference statistics.

A :class:`Reference` keeps, per numeric column, a fine quantile sketch of the
training data (``resolution`` quantiles) and its null fraction: small enough to
store beside a model as JSON, and enough to compute both statistics for any
number of current rows without the training data:

- PSI over ``bins`` equal-frequency bins of the reference (edges from the sketch),
  ``sum((c - r) * ln(c / r))`` with proportions floored at ``1e-4``;
- KS: the largest gap between the reference CDF (the sketch's, exact to
  ``1 / resolution``) and the current rows' empirical CDF; its asymptotic
  two-sample p-value counts only the part of the gap beyond that resolution.

A column has drifted when its PSI is above ``psi_threshold``, or when the KS
gap is both significant (p below ``p_threshold``) and large enough to matter
(above ``ks_threshold``): with many rows a p-value alone flags differences too
small to act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import InvalidArgument, MissingColumnError

_FLOOR = 1e-4  # PSI proportions: an empty bin would make the log infinite


@dataclass(frozen=True)
class Reference:
    """Per column: quantile sketch (``resolution`` + 1 values), null fraction and row count of the reference."""

    columns: dict[str, dict[str, Any]]
    bins: int = 10

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "bins": self.bins}

    def merged(self, other: Reference) -> Reference:
        """The columns of both (``other``'s win on a clash)."""
        return Reference({**self.columns, **other.columns}, self.bins)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        return cls(data["columns"], data["bins"])


def reference(frame: pd.DataFrame, columns: list[str] | None = None, bins: int = 10,
              resolution: int = 1000) -> Reference:
    """Reference statistics of ``frame``'s numeric ``columns`` (default: all of them)."""
    if bins < 2 or resolution < bins:
        raise InvalidArgument(f"Need 2 <= bins <= resolution, got bins={bins}, resolution={resolution}.")
    if columns is None:
        columns = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    _check_columns(frame, columns, "reference")
    probabilities = np.linspace(0.0, 1.0, resolution + 1)
    found = {}
    for column in columns:
        values = _finite(frame[column])
        if not len(values):
            raise InvalidArgument(f"Column {column!r} has no numeric values to take as the reference.")
        found[column] = {"quantiles": np.quantile(values, probabilities).tolist(), "rows": int(len(frame)),
                         "null_fraction": float(1 - len(values) / len(frame))}
    return Reference(found, bins)


@dataclass(frozen=True)
class DriftReport:
    """PSI, KS statistic and p-value per column, and which columns drifted by the thresholds."""

    table: pd.DataFrame = field(repr=False)  # index: column; psi, ks, p_value, null_fraction(_reference), drifted
    psi_threshold: float
    p_threshold: float
    ks_threshold: float

    @property
    def drifted(self) -> list[str]:
        """The columns whose PSI or KS p-value crossed its threshold."""
        return self.table.index[self.table["drifted"]].tolist()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr style='color:{'#cf222e' if r.drifted else 'inherit'}'><td>{escape(str(name))}</td>"
            f"<td>{r.psi:.4f}</td><td>{r.ks:.4f}</td><td>{r.p_value:.3g}</td><td>{'drifted' if r.drifted else 'ok'}</td></tr>"
            for name, r in self.table.iterrows())
        return (f"<div><h4>Drift: {len(self.drifted)} of {len(self.table)} columns (PSI &gt; {self.psi_threshold} "
                f"or KS &gt; {self.ks_threshold} with p &lt; {self.p_threshold})</h4><table><tr><th>column</th><th>PSI</th><th>KS</th>"
                f"<th>p-value</th><th></th></tr>{rows}</table></div>")


def drift(ref: Reference, current: pd.DataFrame, psi_threshold: float = 0.2, p_threshold: float = 0.01,
          ks_threshold: float = 0.1, columns: list[str] | None = None) -> DriftReport:
    """Compare ``current`` rows with the reference, column by column (``columns``: default every one)."""
    columns = list(ref.columns) if columns is None else columns
    unknown = [c for c in columns if c not in ref.columns]
    if unknown:
        raise InvalidArgument(f"The reference has no column(s) {unknown}; it has {list(ref.columns)}.")
    _check_columns(current, columns, "current")
    rows = []
    for column in columns:
        stats = ref.columns[column]
        sketch = np.asarray(stats["quantiles"])
        values = np.sort(_finite(current[column]))  # the distinct values and the CDFs below need them sorted
        if not len(values):
            raise InvalidArgument(f"Column {column!r} of the current rows has no numeric values to compare.")
        psi = _psi(sketch, values, ref.bins)
        ks = _ks(sketch, values)
        n, m = stats["rows"], len(values)
        # The sketch knows the reference CDF to 1/resolution: only a gap beyond that is evidence.
        p_value = _ks_p_value(max(0.0, ks - 1 / (len(sketch) - 1)), n * m / (n + m))
        rows.append({"column": column, "psi": psi, "ks": ks, "p_value": p_value,
                     "null_fraction": 1 - m / len(current), "null_fraction_reference": stats["null_fraction"],
                     "drifted": psi > psi_threshold or (p_value < p_threshold and ks > ks_threshold)})
    return DriftReport(pd.DataFrame(rows).set_index("column"), psi_threshold, p_threshold, ks_threshold)


def _psi(sketch: np.ndarray, values: np.ndarray, bins: int) -> float:
    resolution = len(sketch) - 1
    inner = np.unique(sketch[[round(i * resolution / bins) for i in range(1, bins)]])  # equal-frequency edges
    expected = np.diff(_cdf(sketch, inner), prepend=0, append=1)
    observed = np.diff(_cdf(values, inner), prepend=0, append=1)
    expected, observed = np.maximum(expected, _FLOOR), np.maximum(observed, _FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def _ks(sketch: np.ndarray, values: np.ndarray) -> float:
    """sup |F_ref - F_cur|: between two distinct current values only the reference moves, so checking at
    each distinct value and just before it finds the supremum (ties, as in discrete features, included).
    ``values`` are sorted, so their distinct values are where they change (no second sort)."""
    starts = np.flatnonzero(np.diff(values, prepend=-np.inf))
    distinct, counts = values[starts], np.diff(starts, append=len(values))
    upto = np.cumsum(counts) / len(values)
    at = np.abs(_cdf_at_many(sketch, distinct) - upto)
    before = np.abs(_cdf_at_many(sketch, distinct, "left") - (upto - counts / len(values)))
    return float(max(at.max(), before.max()))


def _cdf_at_many(sorted_values: np.ndarray, points: np.ndarray, side: str = "right") -> np.ndarray:
    """:func:`_cdf` at many sorted ``points``: each of the few values counted into the points, O(points).

    A value is <= the j-th point exactly when its left insertion index among the points is <= j
    (for ``side="left"``, < when its right index is).
    """
    where = np.searchsorted(points, sorted_values, side="left" if side == "right" else "right")
    return np.cumsum(np.bincount(where, minlength=len(points) + 1))[:len(points)] / len(sorted_values)


def _cdf(sorted_values: np.ndarray, points: np.ndarray, side: str = "right") -> np.ndarray:
    """The empirical CDF of ``sorted_values`` at ``points`` (``side="left"``: just before them)."""
    return np.searchsorted(sorted_values, points, side=side) / len(sorted_values)


def _ks_p_value(statistic: float, effective_n: float) -> float:
    """The asymptotic Kolmogorov distribution's survival function at ``sqrt(n_eff) * D``."""
    from scipy.special import kolmogorov

    return float(kolmogorov(math.sqrt(effective_n) * statistic))


def _finite(column: pd.Series) -> np.ndarray:
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    return values[np.isfinite(values)]


def _check_columns(frame: pd.DataFrame, columns: list[str], which: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumnError(f"The {which} rows have no column(s) {missing}; they have {list(frame.columns)}.")
