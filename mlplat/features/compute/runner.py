"""Computing a range of a batch view's partitions: what is due, running them here or on Dask, the result.

:func:`run` is ``p.features.compute``: it skips what the partition log says succeeded, runs
each partition (:func:`~mlplat.features.compute.task.compute_partition`) in turn, or in
parallel on a Dask client's workers, records each outcome, and reports the failures together.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from mlplat.errors import InvalidArgument, TransformationError, one_line
from mlplat.features import udf
from mlplat.features.compute.log import PartitionLog
from mlplat.features.compute.partitions import Outcome, label, partitions, step_ns
from mlplat.features.compute.sources import indexed, source_tables
from mlplat.features.compute.sql import duckdb_module
from mlplat.features.compute.task import compute_partition
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.definitions import FeatureView
from mlplat.features.materialize import MaterializeResult
from mlplat.features.quality import QuarantineWarning
from mlplat.progress import ProgressBar, progress_bar

if TYPE_CHECKING:
    from mlplat.audit import Audit


@dataclasses.dataclass(frozen=True)
class ComputeResult:
    """What one ``compute`` call did: partitions computed and skipped (already done), rows stored, time taken."""

    view: str
    version: int
    computed: list[str]
    skipped: list[str]
    rows: int
    seconds: float
    quarantined: int = 0
    materialized: MaterializeResult | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        span = f" ({self.computed[0]}..{self.computed[-1]})" if len(self.computed) > 1 else \
            f" ({self.computed[0]})" if self.computed else ""
        text = (f"{self.view} v{self.version}: computed {len(self.computed)} partition(s){span}, {self.rows:,} rows "
                f"in {self.seconds:.1f} s")
        if self.skipped:
            text += f"; {len(self.skipped)} already done, skipped"
        if self.quarantined:
            text += f"; {self.quarantined:,} rows quarantined"
        if self.materialized is not None:
            text += f"; {self.materialized.written:,} entities written online"
        return text


def run(view: FeatureView, start_ns: int | None, end_ns: int | None, *, log: PartitionLog, offline_url: str,
        audit: Audit, client: Any = None, force: bool = False, progress: bool | ProgressBar | None = None,
        sources: Any = None, now_ns: int | None = None) -> ComputeResult:
    """Compute ``view``'s partitions in ``[start, end)`` into the offline store at ``offline_url``, recording each
    in ``log`` and the whole in ``audit`` (``FeatureStore.compute``).

    A bound left out is due-based: ``end`` the start of the current partition, ``start`` the first partition
    not yet computed successfully (or the one before ``end`` when none ever was), so a scheduled run computes
    what is due and retries what failed.
    """
    if not isinstance(view, BatchFeatureView):
        raise InvalidArgument(f"{view.name!r} is a feature view without a transformation, so there is nothing to "
                              "compute; ingest its rows with p.features.ingest, or define it as a BatchFeatureView.")
    if view.language == "sql":
        duckdb_module()  # a missing engine fails once, here, rather than in every partition
    else:
        udf.loaded(view.transformation)  # so does a function that cannot be loaded, before any partition starts
    step = step_ns(view)
    if end_ns is None:
        end_ns = (now_ns or time.time_ns()) // step * step
    due = start_ns is None
    if due:
        start_ns = log.resume_point(view, end_ns)
        start_ns = end_ns - step if start_ns is None else start_ns
    parts = [] if due and start_ns >= end_ns else partitions(view, start_ns, end_ns)
    statuses = {start: row.status for start, row in log.rows(view).items()}
    todo = [(s, e) for s, e in parts if force or statuses.get(s) != "succeeded"]
    skipped = [label(view, start) for start, end in parts if (start, end) not in todo]
    tables = source_tables(view, sources)
    if todo and view.language == "python":  # each partition then opens only the files that can hold its rows
        tables = {name: indexed(view, t) if isinstance(t, str) else t for name, t in tables.items()}
    log.started(view, todo)
    outcomes: list[Outcome] = []
    began = time.perf_counter()
    with progress_bar(len(todo), f"compute {view.name}", progress, unit="partition") as bar:
        for outcome in _execute(view, offline_url, todo, tables, client):
            log.finished(view, outcome)
            outcomes.append(outcome)
            bar.update()
            bar.set_postfix(rows=sum(o.rows for o in outcomes), failed=sum(bool(o.error) for o in outcomes))
    seconds = time.perf_counter() - began
    failed = {label(view, o.start_ns): o.error for o in sorted(outcomes, key=lambda o: o.start_ns) if o.error}
    computed = [label(view, o.start_ns) for o in sorted(outcomes, key=lambda o: o.start_ns) if not o.error]
    rows, quarantined = sum(o.rows for o in outcomes), sum(o.quarantined for o in outcomes)
    span = {"start": label(view, parts[0][0]), "end": label(view, parts[-1][1])} if parts else {}
    if todo:
        audit.record("feature_view", view.name, "computed", view.version, partitions=len(computed), rows=rows,
                     skipped=len(skipped), failed=sorted(failed), seconds=round(seconds, 3), **span)
    if quarantined:
        warnings.warn(f"{quarantined:,} computed row(s) of {view.name!r} broke its expectations and were quarantined; "
                      f"p.features.quarantine({view.name!r}) reads them back.", QuarantineWarning, stacklevel=3)
    if failed:
        raise TransformationError(_failure_message(view, failed, len(todo), span), failed)
    return ComputeResult(view.name, view.version, computed, skipped, rows, seconds, quarantined)


def _failure_message(view: BatchFeatureView, failed: dict[str, str], attempted: int, span: dict[str, str]) -> str:
    by_error: dict[str, list[str]] = {}
    for part, error in failed.items():
        by_error.setdefault(error, []).append(part)
    reasons = "; ".join(f"{', '.join(parts[:3])}{f' and {len(parts) - 3} more' if len(parts) > 3 else ''}: "
                        f"{error.rstrip('.')}"
                        for error, parts in by_error.items())
    kept = attempted - len(failed)
    stored = f"The {kept} that succeeded are stored" if kept else "Nothing was stored"
    return (f"Computing feature view {view.name!r} v{view.version} failed in {len(failed)} of {attempted} "
            f"partition(s): {reasons}. {stored}; fix the cause and run "
            f"p.features.compute({view.name!r}, {span.get('start')!r}, {span.get('end')!r}) again to compute only "
            f"what is missing (p.features.partitions({view.name!r}) shows each partition's status and traceback).")


def _execute(view: BatchFeatureView, offline_url: str, todo: list[tuple[int, int]], tables: dict[str, Any],
             client: Any) -> Iterator[Outcome]:
    """Each partition's outcome as it finishes: here in turn, or on the client's workers in parallel."""
    if client is None:
        for start, end in todo:
            yield compute_partition(view, offline_url, start, end, tables)
        return
    from dask.distributed import as_completed

    spec = view.to_dict()  # the worker rebuilds the view, and its function, from what the registry holds
    shared = {name: client.scatter(t) if isinstance(t, (pd.DataFrame, pa.Table)) else t for name, t in tables.items()}
    futures = {client.submit(compute_partition, spec, offline_url, start, end, shared, 1, pure=False): (start, end)
               for start, end in todo}
    for future in as_completed(futures):
        try:
            yield future.result()
        except Exception as exc:  # the worker died (KilledWorker), or the task could not run there
            start, end = futures[future]
            yield Outcome(start, end, error=one_line(exc), detail=traceback.format_exc()[-4000:])
