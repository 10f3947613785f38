"""Batch feature views: features a transformation computes from a source, partition by partition.

A :class:`BatchFeatureView` is a FeatureView with a ``transformation``: a Python
function over a pandas DataFrame, or a SQL query (run by DuckDB) over its
``sources`` (Parquet or CSV files, or DataFrames given to ``compute``).
``p.features.compute(view, start, end)`` cuts ``[start, end)`` into partitions
(a UTC day by default) and, for each, runs the transformation, checks what it
returned against the view, screens it by the view's expectations (as ingest
does) and stores it offline. With a Dask ``client`` the partitions run in
parallel on the workers (each still hands the transformation a pandas
DataFrame); without one they run here, one after the other.

What a transformation sees, and what it must return:

- A Python function ``fn(df)`` gets the source rows whose time column
  (``source_timestamp_field``, default the view's ``timestamp_field``) is in
  ``[start - lookback, end)``; if it declares ``start`` and ``end`` parameters it
  gets the partition's bounds too (UTC ``pd.Timestamp``). ``lookback`` gives a
  rolling feature the history it needs; rows it returns from before ``start``
  are that history, and are dropped.
- A SQL query sees each source as a table of that name and the partition's
  bounds as the parameters ``$start`` and ``$end`` (UTC timestamps); it filters
  the rows it reads itself (``WHERE pickup_at >= $start AND pickup_at < $end``).
- Either returns exactly the view's join keys, timestamp field(s) and features,
  of types the features accept, with event times in ``[start, end)``; anything
  else is a :class:`~mlplat.errors.TransformationError` naming the partition. An
  aggregate known only once the partition closes is stamped just before its end
  (``end - pd.Timedelta(1, "us")``, in SQL ``$end - INTERVAL 1 MICROSECOND``), so
  point-in-time joins never see it early.

Every partition's outcome is a row of the ``feature_compute_partitions`` table
(status, rows, error, start and finish time). Computing a range again skips the
partitions that succeeded, so a backfill that failed resumes where it stopped;
``force=True`` recomputes them. A recomputed partition *replaces* its earlier
rows (:meth:`OfflineStore.replace`): rerunning never duplicates anything.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.errors import (
    DefinitionError,
    InvalidArgument,
    JobError,
    MissingDependency,
    SchemaError,
    TransformationError,
    one_line,
)
from mlplat.features import udf
from mlplat.features.definitions import FeatureView, _check_name, _plain
from mlplat.features.materialize import MaterializeResult
from mlplat.features.offline import OfflineStore, day_of
from mlplat.features.schema import TIMESTAMP, conform, to_table
from mlplat.jobs.templates import template
from mlplat.progress import ProgressBar, progress_bar

DAY = timedelta(days=1)
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
NOTEBOOK = "feature_compute.ipynb"  # the template the scheduler runs (templates/)

partitions_table = sa.Table(
    "feature_compute_partitions", metadata,
    sa.Column("view", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("start_ns", sa.BigInteger, primary_key=True),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Column("label", sa.String(40), nullable=False),  # "2024-01-31", or "2024-01-31T06:00" below a day
    sa.Column("status", sa.String(20), nullable=False),  # "running", "succeeded" or "failed"
    sa.Column("rows", sa.BigInteger),
    sa.Column("error", sa.Text),  # the traceback of a failure
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


@dataclasses.dataclass(frozen=True)
class BatchFeatureView(FeatureView):
    """A feature view that a transformation computes from ``sources``, one partition at a time.

    >>> def daily_trips(trips, start, end):
    ...     per_driver = trips.groupby("driver_id", as_index=False).agg(trips=("fare", "size"),
    ...                                                                  revenue=("fare", "sum"))
    ...     return per_driver.assign(event_timestamp=end - pd.Timedelta(1, "us"))  # known when the day closes
    >>> BatchFeatureView("driver_daily", entities=[driver], schema=[Field("trips", "int64"),
    ...                  Field("revenue", "float64")], transformation=daily_trips,
    ...                  sources="/data/trips/*.parquet", source_timestamp_field="pickup_at",
    ...                  schedule="0 2 * * *")

    ``transformation`` is a function defined with ``def`` (stored in the registry
    by module, name and source) or a SQL query; ``sources`` a path or glob of
    Parquet or CSV files, or for SQL a mapping of table name to path (a single
    path is the table ``source``); ``partition`` a whole number of days or a
    fraction of one that divides it (partitions are aligned to UTC midnight);
    ``lookback`` how much history before a partition a Python transformation
    reads; ``schedule`` a cron line: applying the view schedules its compute job
    (:meth:`FeatureStore.schedule_compute`), which the scheduler runs.
    See the module docstring for what a transformation sees and returns.
    """

    transformation: Callable[..., Any] | str = dataclasses.field(kw_only=True)
    sources: Mapping[str, str] | str = dataclasses.field(default_factory=dict, kw_only=True)
    source_timestamp_field: str | None = dataclasses.field(default=None, kw_only=True)
    partition: timedelta = dataclasses.field(default=DAY, kw_only=True)
    lookback: timedelta = dataclasses.field(default=timedelta(0), kw_only=True)
    schedule: str | None = dataclasses.field(default=None, kw_only=True)

    kind: ClassVar[str] = "batch"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"BatchFeatureView {self.name!r}"
        sources = {"source": self.sources} if isinstance(self.sources, (str, os.PathLike)) else self.sources
        if not isinstance(sources, Mapping) or not all(isinstance(p, (str, os.PathLike)) for p in sources.values()):
            raise DefinitionError(f"{where}: sources must be a path or glob of Parquet or CSV files, or a mapping of "
                                  "table name to path such as {'trips': '/data/trips/*.parquet'}; pass DataFrames "
                                  "to compute(..., sources=...) instead.")
        for table in sources:
            _check_name("Source table", table)
        object.__setattr__(self, "sources", {table: str(path) for table, path in sources.items()})
        if isinstance(self.transformation, str):
            if not self.transformation.strip():
                raise DefinitionError(f"{where}: the SQL transformation is empty.")
            if self.lookback:
                raise DefinitionError(f"{where}: a SQL transformation reads its own window, so lookback does not "
                                      "apply; filter with e.g. `ts >= $start - INTERVAL 7 DAY` instead.")
        else:
            object.__setattr__(self, "_recorded", _describe(self.transformation, f"{where}: transformation"))
            if len(self.sources) != 1:
                raise DefinitionError(f"{where}: a Python transformation reads one source (sources='path/*.parquet'), "
                                      f"not {len(self.sources)}; join several with a SQL transformation.")
        if not isinstance(self.partition, timedelta) or self.partition <= timedelta(0) or (
                DAY % self.partition and self.partition % DAY):
            raise DefinitionError(f"{where}: partition must be whole days or divide a day (e.g. timedelta(hours=6)), "
                                  f"not {self.partition!r}.")
        if not isinstance(self.lookback, timedelta) or self.lookback < timedelta(0):
            raise DefinitionError(f"{where}: lookback must be a timedelta of zero or more, not {self.lookback!r}.")
        if self.source_timestamp_field is not None:
            _check_name("Source timestamp field", self.source_timestamp_field)
        if self.schedule is not None:
            _check_cron(self.schedule, where)

    @property
    def language(self) -> str:
        """``"sql"`` or ``"python"``."""
        return "sql" if isinstance(self.transformation, str) else "python"

    @property
    def source_time(self) -> str:
        """The sources' event-time column."""
        return self.source_timestamp_field or self.timestamp_field

    def _transformation_record(self) -> dict[str, Any]:
        return {"sql": self.transformation} if self.language == "sql" else {"python": self._recorded}

    def _transformation_summary(self) -> str:
        record = self._transformation_record()
        text = record.get("sql") or record["python"]["source"]
        name = "" if self.language == "sql" else f" {record['python']['name']}"
        return f"{self.language}{name} #{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def kind_changes(self, old: FeatureView) -> list[dict[str, Any]]:
        """A new transformation, lookback, partitioning or source time column makes a new version; sources
        and schedule change in place.

        Stored rows are what the transformation made of the source: rows of two transformations under one
        version would mix two meanings, and a model's lineage (which names view versions) could no longer
        say which it was trained on. Moving the files (``sources``) or the schedule changes neither.
        """
        assert isinstance(old, BatchFeatureView)
        changes = []
        if old._transformation_record() != self._transformation_record():
            changes.append({"change": "transformation changed", "from": old._transformation_summary(),
                            "to": self._transformation_summary(), "incompatible": True})
        for attr, incompatible in (("lookback", True), ("partition", True), ("source_timestamp_field", True),
                                   ("sources", False), ("schedule", False)):
            before, after = getattr(old, attr), getattr(self, attr)
            if before != after:
                changes.append({"change": f"{attr} changed", "from": _plain(before), "to": _plain(after),
                                "incompatible": incompatible})
        return changes

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["transformation"] = self._transformation_record()
        data["partition"] = self.partition.total_seconds()
        data["lookback"] = self.lookback.total_seconds()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchFeatureView:
        data = dict(data)
        recorded = data["transformation"]
        owner = f"feature view {data['name']!r} v{data.get('version', 0)}: transformation"
        # Reading a view never runs its code: the function loads when the view is computed.
        data["transformation"] = recorded["sql"] if "sql" in recorded else udf.StoredFunction(recorded["python"], owner)
        data["partition"] = timedelta(seconds=data["partition"])
        data["lookback"] = timedelta(seconds=data["lookback"])
        return super().from_dict(data)


def _describe(function: Any, what: str) -> dict[str, str]:
    if isinstance(function, udf.StoredFunction):  # read from the registry: what was applied, unloaded
        return function.recorded
    if not callable(function):
        raise DefinitionError(f"{what} must be a function or a SQL query (a str), not {type(function).__name__}.")
    return udf.describe(function, what)


def _check_cron(cron: Any, where: str) -> None:
    from mlplat.cron import check_cron

    try:
        check_cron(cron)
    except JobError as exc:
        raise DefinitionError(f"{where}: schedule {exc}") from None


# -- results and the partition table ----------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one partition went (what a Dask worker sends back)."""

    start_ns: int
    end_ns: int
    rows: int = 0
    quarantined: int = 0
    error: str | None = None  # one line
    detail: str | None = None  # the traceback
    seconds: float = 0.0


class PartitionLog:
    """The ``feature_compute_partitions`` table: each computed partition's status, rows and error."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def _key(self, view: FeatureView) -> tuple[Any, ...]:
        return partitions_table.c.view == view.name, partitions_table.c.version == view.version

    def rows(self, view: FeatureView) -> dict[int, Any]:
        """start_ns -> row, for every partition of this view version ever started."""
        with self.engine.connect() as conn:
            return {row.start_ns: row for row in conn.execute(sa.select(partitions_table).where(*self._key(view)))}

    def started(self, view: BatchFeatureView, parts: list[tuple[int, int]]) -> None:
        if not parts:
            return
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(partitions_table.delete().where(
                *self._key(view), partitions_table.c.start_ns.in_([start for start, _ in parts])))
            conn.execute(partitions_table.insert(), [
                {"view": view.name, "version": view.version, "start_ns": start, "end_ns": end,
                 "label": label(view, start), "status": "running", "started_at": now} for start, end in parts])

    def finished(self, view: FeatureView, outcome: Outcome) -> None:
        with self.engine.begin() as conn:
            conn.execute(partitions_table.update().where(*self._key(view), partitions_table.c.start_ns == outcome.start_ns)
                         .values(status="failed" if outcome.error else "succeeded", rows=outcome.rows,
                                 error=outcome.detail, finished_at=datetime.now(UTC)))

    def frame(self, view: FeatureView) -> pd.DataFrame:
        """One row per partition, oldest first: partition, status, rows, error, started_at, finished_at."""
        rows = sorted(self.rows(view).values(), key=lambda r: r.start_ns)
        frame = pd.DataFrame({
            "partition": [r.label for r in rows], "status": [r.status for r in rows],
            "rows": pd.array([r.rows for r in rows], dtype="Int64"), "error": [r.error for r in rows],
            "started_at": pd.to_datetime([r.started_at for r in rows]),
            "finished_at": pd.to_datetime([r.finished_at for r in rows])})
        for column in ("started_at", "finished_at"):  # SQLite reads times back without their zone
            if frame[column].dt.tz is None:
                frame[column] = frame[column].dt.tz_localize(UTC)
        return frame

    def resume_point(self, view: BatchFeatureView, end_ns: int) -> int | None:
        """Where a computation up to ``end_ns`` is due from: the first partition not done, or after the last done."""
        rows = [r for r in self.rows(view).values() if r.start_ns < end_ns]
        pending = [r.start_ns for r in rows if r.status != "succeeded"]
        done = [r.end_ns for r in rows if r.status == "succeeded"]
        candidates = pending + ([max(done)] if done else [])
        return min(candidates) if candidates else None


def label(view: BatchFeatureView, start_ns: int) -> str:
    """The partition's name: its first day, or day and time for partitions shorter than a day."""
    moment = pd.Timestamp(start_ns, unit="ns", tz=UTC)
    return moment.strftime("%Y-%m-%d" if view.partition >= DAY else "%Y-%m-%dT%H:%M")


def _tag(start_ns: int) -> str:
    return "c" + pd.Timestamp(start_ns, unit="ns", tz=UTC).strftime("%Y%m%dT%H%M%S")


def _step_ns(view: BatchFeatureView) -> int:
    return view.partition // timedelta(microseconds=1) * 1000


def partitions(view: BatchFeatureView, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into the view's partitions; both bounds must fall on partition boundaries."""
    step = _step_ns(view)
    for value, name in ((start_ns, "start"), (end_ns, "end")):
        if value % step:
            before = pd.Timestamp(value // step * step, unit="ns", tz=UTC)
            raise InvalidArgument(
                f"compute({view.name!r}): {name} {pd.Timestamp(value, unit='ns', tz=UTC)} is not on a partition "
                f"boundary; {view.name!r} is computed in whole partitions of {view.partition} from UTC midnight, "
                f"e.g. {before} or {before + view.partition}.")
    if start_ns >= end_ns:
        raise InvalidArgument(f"compute({view.name!r}): start {pd.Timestamp(start_ns, unit='ns', tz=UTC)} is not "
                              f"before end {pd.Timestamp(end_ns, unit='ns', tz=UTC)}.")
    return [(s, s + step) for s in range(start_ns, end_ns, step)]


# -- running a computation ----------------------------------------------------------------------------------
def run(store: Any, view: FeatureView, start_ns: int | None, end_ns: int | None, *, client: Any = None,
        force: bool = False, progress: bool | ProgressBar | None = None, sources: Any = None,
        now_ns: int | None = None) -> ComputeResult:
    """Compute ``view``'s partitions in ``[start, end)`` into ``store``'s offline store (``FeatureStore.compute``).

    A bound left out is due-based: ``end`` the start of the current partition, ``start`` the first partition
    not yet computed successfully (or the one before ``end`` when none ever was), so a scheduled run computes
    what is due and retries what failed.
    """
    if not isinstance(view, BatchFeatureView):
        raise InvalidArgument(f"{view.name!r} is a feature view without a transformation, so there is nothing to "
                              "compute; ingest its rows with p.features.ingest, or define it as a BatchFeatureView.")
    if view.language == "sql":
        _duckdb()  # a missing engine fails once, here, rather than in every partition
    else:
        udf.loaded(view.transformation)  # so does a function that cannot be loaded, before any partition starts
    log = PartitionLog(store.registry.engine)
    step = _step_ns(view)
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
    tables = _tables(view, sources)
    if todo and view.language == "python":  # each partition then opens only the files that can hold its rows
        tables = {name: _indexed(view, t) if isinstance(t, str) else t for name, t in tables.items()}
    log.started(view, todo)
    outcomes: list[Outcome] = []
    began = time.perf_counter()
    with progress_bar(len(todo), f"compute {view.name}", progress, unit="partition") as bar:
        for outcome in _execute(view, store.offline.url, todo, tables, client):
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
        store.audit.record("feature_view", view.name, "computed", view.version, partitions=len(computed), rows=rows,
                           skipped=len(skipped), failed=sorted(failed), seconds=round(seconds, 3), **span)
    if quarantined:
        from mlplat.features.quality import QuarantineWarning

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


def _tables(view: BatchFeatureView, given: Any) -> dict[str, Any]:
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


def compute_partition(view: FeatureView | dict[str, Any], offline_url: str, start_ns: int, end_ns: int,
                      tables: Mapping[str, Any], threads: int | None = None) -> Outcome:
    """Compute and store one partition; never raises (a failure is the Outcome's ``error``).

    ``view`` is the view, or its ``to_dict()`` (as a Dask worker gets it); ``threads`` caps DuckDB's threads
    where partitions already run side by side.
    """
    from mlplat.features.quality import QuarantineWarning, screened

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
                offline.replace(view, kept, _tag(start_ns), day_of(start_ns), day_of(end_ns - 1))
        return Outcome(start_ns, end_ns, kept.num_rows, table.num_rows - kept.num_rows,
                       seconds=time.perf_counter() - began)
    except Exception as exc:  # the user's code may raise anything: record it against this partition
        return Outcome(start_ns, end_ns, error=one_line(exc), detail=traceback.format_exc()[-4000:],
                       seconds=time.perf_counter() - began)



def _transform(view: BatchFeatureView, start_ns: int, end_ns: int, tables: Mapping[str, Any],
               threads: int | None) -> Any:
    start, end = (pd.Timestamp(ns, unit="ns", tz=UTC) for ns in (start_ns, end_ns))
    if view.language == "sql":
        return _run_sql(view, tables, start, end, threads)
    name = next(iter(view.sources))
    frame = _read_window(view, tables[name], start - view.lookback, end, threads is None)
    function = udf.loaded(view.transformation)
    accepts = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepts.values())
    bounds = {k: v for k, v in (("start", start), ("end", end)) if takes_all or k in accepts}
    return function(frame, **bounds)


def _read_window(view: BatchFeatureView, source: Any, low: pd.Timestamp, high: pd.Timestamp,
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
        files = _files(view, source)
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


def _indexed(view: BatchFeatureView, path: str) -> str | SourceFiles:
    """``path`` with each file's event-time span, read once per compute rather than once per partition."""
    import pyarrow.parquet as pq

    if "://" in path or path.lower().endswith(".csv"):
        return path
    files = _files(view, path)
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


def _files(view: BatchFeatureView, path: str) -> str | list[str]:
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


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise MissingDependency("SQL transformations run on DuckDB; install it with "
                                "`pip install 'mlplat[compute]'`.") from None
    return duckdb


def _run_sql(view: BatchFeatureView, tables: Mapping[str, Any], start: pd.Timestamp, end: pd.Timestamp,
             threads: int | None) -> pa.Table:
    duckdb = _duckdb()
    query = view.transformation
    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, source in tables.items():
            if isinstance(source, (pd.DataFrame, pa.Table)):
                con.register(name, source)
                continue
            files = _files(view, source)
            if isinstance(files, str) and Path(files).is_dir():
                files = os.path.join(files, "**", "*.parquet")
            listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in
                                     ([files] if isinstance(files, str) else files)) + "]"
            reader = "read_csv" if source.lower().endswith(".csv") else "read_parquet"
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}({listed})')
        params = {k: v.to_pydatetime() for k, v in (("start", start), ("end", end))
                  if re.search(rf"\${k}\b", query)}
        relation = con.sql(query, params=params or None)
        if relation is None:
            raise TransformationError(f"The SQL transformation of feature view {view.name!r} returns no rows; "
                                      "it must be a SELECT.")
        return (getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table)()
    except duckdb.Error as exc:
        raise TransformationError(f"The SQL transformation of feature view {view.name!r} failed: {exc}") from None
    finally:
        con.close()


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


# -- schedules ------------------------------------------------------------------------------------------------
def schedule(jobs: Any, view: BatchFeatureView, cron: str | None = None, materialize: bool = False) -> int:
    """Run ``feature_compute.ipynb`` for ``view`` on ``cron`` (default its ``schedule``); return the schedule id.

    Each run computes what is due (see :func:`run`). Scheduling a view again with the same cron and options
    returns the existing schedule; with others, it pauses the old one and creates a new one.
    """
    if not isinstance(view, BatchFeatureView):
        raise InvalidArgument(f"{view.name!r} is not a batch feature view, so there is nothing to schedule.")
    cron = cron or view.schedule
    if not cron:
        raise InvalidArgument(f"{view.name!r} has no schedule; define it with schedule='0 2 * * *' or pass cron=.")
    notebook = template(NOTEBOOK)
    parameters = {"view": view.name, "materialize": bool(materialize)}
    for existing in jobs.schedules():
        if existing.enabled and Path(existing.notebook) == notebook and existing.parameters.get("view") == view.name:
            if existing.cron == cron and existing.parameters == parameters:
                return existing.id
            jobs.pause(existing.id)
    return jobs.schedule(notebook, cron, parameters)
