"""One partition: transformed, checked, screened by the view's expectations and stored offline.

:func:`compute_partition` runs here or on a Dask worker (which gets the view as its
``to_dict()`` and the offline store's URL), and never raises: what went wrong is the
:class:`~mlplat.features.compute.partitions.Outcome`'s error.
"""

from __future__ import annotations

import inspect
import time
import traceback
import warnings
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import pandas as pd

from mlplat.errors import one_line
from mlplat.features import udf
from mlplat.features.compute.output import checked
from mlplat.features.compute.partitions import Outcome, tag
from mlplat.features.compute.sources import read_window
from mlplat.features.compute.sql import run_sql
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.definitions import FeatureView
from mlplat.features.offline import OfflineStore, day_of
from mlplat.features.quality import QuarantineWarning, screened


def compute_partition(view: FeatureView | dict[str, Any], offline_url: str, start_ns: int, end_ns: int,
                      tables: Mapping[str, Any], threads: int | None = None) -> Outcome:
    """Compute and store one partition; never raises (a failure is the Outcome's ``error``).

    ``view`` is the view, or its ``to_dict()`` (as a Dask worker gets it); ``threads`` caps DuckDB's threads
    where partitions already run side by side.
    """
    began = time.perf_counter()
    try:
        if not isinstance(view, FeatureView):
            view = FeatureView.from_dict(view)
        assert isinstance(view, BatchFeatureView)
        output = _transform(view, start_ns, end_ns, tables, threads)
        table = checked(view, output, start_ns, end_ns)
        offline = OfflineStore(offline_url)
        with warnings.catch_warnings():  # the caller warns once, for every partition
            warnings.simplefilter("ignore", QuarantineWarning)
            with screened(offline, view, table) as kept:
                offline.replace(view, kept, tag(start_ns), day_of(start_ns), day_of(end_ns - 1))
        return Outcome(start_ns, end_ns, kept.num_rows, table.num_rows - kept.num_rows,
                       seconds=time.perf_counter() - began)
    except Exception as exc:  # the user's code may raise anything: record it against this partition
        return Outcome(start_ns, end_ns, error=one_line(exc), detail=traceback.format_exc()[-4000:],
                       seconds=time.perf_counter() - began)


def _transform(view: BatchFeatureView, start_ns: int, end_ns: int, tables: Mapping[str, Any],
               threads: int | None) -> Any:
    start, end = (pd.Timestamp(ns, unit="ns", tz=UTC) for ns in (start_ns, end_ns))
    if view.language == "sql":
        return run_sql(view, tables, start, end, threads)
    name = next(iter(view.sources))
    frame = read_window(view, tables[name], start - view.lookback, end, threads is None)
    function = udf.loaded(view.transformation)
    accepts = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepts.values())
    bounds = {k: v for k, v in (("start", start), ("end", end)) if takes_all or k in accepts}
    return function(frame, **bounds)
