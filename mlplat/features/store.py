"""``p.features``: the feature store a user talks to.

A thin handle over what it is given: the registry, the offline store, the online store,
the allowed clock skew, and a :class:`~mlplat.scheduling.TemplateScheduler` for scheduled
computes (:class:`mlplat.platform.Platform` wires them). Each operation lives in its own module.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import DefinitionError, FeatureNotFound, FutureEventError, InvalidArgument, MissingColumnError
from mlplat.features import keys, retrieval
from mlplat.features.definitions import Entity, FeatureView, check_text, diff_views, keep_ownership
from mlplat.features.materialize import MaterializeResult, materialize_view, write_latest
from mlplat.features.offline import IngestResult, OfflineStore
from mlplat.features.on_demand import Expansion, expand, is_on_demand, refuse_storage
from mlplat.features.online import RecordCodec, RedisOnlineStore, read_online
from mlplat.features.quality import read_quarantine, screened
from mlplat.features.refs import ViewRequest, resolve
from mlplat.features.registry import ApplyResult, Registry
from mlplat.features.schema import conform
from mlplat.features.stats import Freshness, ViewStats, freshness, view_stats
from mlplat.progress import ProgressBar, progress_bar
from mlplat.scheduling import TemplateScheduler
from mlplat.times import nanoseconds

if TYPE_CHECKING:
    from mlplat.features.compute.log import PartitionLog
    from mlplat.features.compute.runner import ComputeResult


class OnlineFeatures:
    """Online lookup result: columns of plain Python values.

    ``to_dict()`` (column -> list) is the fast path for serving; ``to_df()``
    builds a DataFrame for people.
    """

    def __init__(self, columns: dict[str, list]):
        self._columns = columns

    def to_dict(self) -> dict[str, list]:
        return self._columns

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self._columns)

    def _repr_html_(self) -> str:
        return self.to_df()._repr_html_()

    def __repr__(self) -> str:
        return f"OnlineFeatures({self._columns!r})"


class FeatureStore:
    """Define, ingest, join, materialise and serve features."""

    def __init__(self, registry: Registry, offline: OfflineStore, online: RedisOnlineStore, *,
                 scheduler: TemplateScheduler | None = None, max_clock_skew: timedelta = timedelta(minutes=5)):
        self.registry = registry
        self.offline = offline
        self.online = online
        self.scheduler = scheduler  # runs scheduled computes as notebook jobs; None: they cannot be scheduled
        self.max_clock_skew = max_clock_skew  # ingest and push refuse rows dated later than now + this
        self.audit = registry.audit  # ingest, materialise and push are recorded where apply is
        self._plans: dict[tuple[str, ...], tuple[list[tuple[ViewRequest, RecordCodec]], Expansion | None]] = {}
        self._kinds: dict[tuple[str, int], dict[str, str | None]] = {}  # join key kinds per view version

    # -- definitions -------------------------------------------------------------
    def apply(self, objects: Iterable[Entity | FeatureView]) -> list[ApplyResult]:
        """Register entities and feature views; a schema change makes a new version.

        A batch view with a ``schedule`` gets its scheduled compute job (see :meth:`schedule_compute`).
        """
        if isinstance(objects, (Entity, FeatureView)):
            objects = [objects]
        if isinstance(objects, (str, bytes, Mapping)) or not isinstance(objects, Iterable):
            raise DefinitionError(f"apply() takes a list of Entity and FeatureView objects, not "
                                  f"{type(objects).__name__}: p.features.apply([driver, driver_stats]).")
        objects = list(objects)
        results = self.registry.apply(objects)
        self._plans.clear()
        for scheduled in (o for o in objects if getattr(o, "schedule", None) and self.scheduler is not None):
            self.schedule_compute(scheduled.name)
        return results

    def get_view(self, name: str, version: int | None = None) -> FeatureView:
        return self.registry.get_view(name, version)

    def transfer(self, view: str, team: str) -> ApplyResult:
        """Give feature view ``view`` to ``team`` (recorded as a change of its latest version)."""
        check_text("team", team)
        return self.registry.apply([dataclasses.replace(self.registry.get_view(view), team=team)])[0]

    def list_views(self, pattern: str | None = None) -> list[FeatureView]:
        return self.registry.list_views(None if pattern is None else _text(pattern, "pattern"))

    def search(self, text: str = "") -> list[FeatureView]:
        """The latest version of every view that mentions each word of ``text``, case-insensitively.

        A view mentions what is in its name, description, feature names, feature
        descriptions and tags (keys and values): ``search("driver gold")``.
        """
        words = _text(text, "text").lower().split()
        return [view for view in self.registry.list_views() if all(word in _searchable(view) for word in words)]

    def diff(self, view: FeatureView | str, other: FeatureView | int | None = None) -> list[dict[str, Any]]:
        """Changes from the registered view to ``view`` (a definition), or between two versions.

        ``diff(view_obj)`` previews what ``apply`` would change; ``diff("name", 1)``
        compares version 1 with the latest.
        """
        if isinstance(view, FeatureView):
            registered = self.registry.get_view(view.name)
            return diff_views(registered, keep_ownership(view, registered))
        if other is not None and not isinstance(other, (int, FeatureView)):
            raise InvalidArgument(f"diff({view!r}, {other!r}): compare with a version number or a FeatureView.")
        old = self.registry.get_view(view, other if isinstance(other, int) else None)
        new = other if isinstance(other, FeatureView) else self.registry.get_view(view)
        return diff_views(old, new)

    # -- offline ----------------------------------------------------------------
    def ingest(self, view: str, df: Any = None, start: datetime | str | None = None,
               end: datetime | str | None = None) -> IngestResult:
        """Validate rows and append them offline, all or nothing.

        ``df`` is a DataFrame or Arrow table, the path of a Parquet or CSV file, or (default) the
        view's ``source``. ``start``/``end`` keep only rows with event time in ``[start, end)``: a
        backfill window (ISO strings or datetimes; naive times are UTC). Rows that break the view's
        expectations raise DataQualityError, or are quarantined (with a warning) by its ``on_violation``.
        """
        definition = refuse_storage(self.registry.get_view(view), "ingest")
        bounds = [(None if t is None else nanoseconds(t, n), n, keep)
                  for t, n, keep in ((start, "start", pc.greater_equal), (end, "end", pc.less))]
        if start is not None and end is not None and bounds[0][0] >= bounds[1][0]:
            raise InvalidArgument(f"ingest(start={start}, end={end}): the window [start, end) is empty; "
                                  "start must be before end.")
        table = conform(definition, _read(definition, df))
        for bound, _, keep in bounds:
            if bound is not None:
                times = table.column(definition.timestamp_field)
                table = table.filter(keep(times, pa.scalar(bound, times.type)))
        refuse_future(definition, table, self.max_clock_skew, "ingest")
        with screened(self.offline, definition, table) as table:
            result = self.offline.write(definition, table)
        self._kinds.pop((definition.name, definition.version), None)  # the first write fixes the key kinds
        self.audit.record("feature_view", view, "ingested", definition.version, rows=result.rows, files=result.files,
                          source=_origin(definition, df), start=start, end=end)
        return result

    def get_training_set(
        self, entity_df: pd.DataFrame, features: Sequence[str], *, timestamp_field: str = "event_timestamp",
        client: Any = None,
    ) -> Any:
        """``entity_df`` plus point-in-time correct feature columns.

        Each row at time t gets, per view, the latest value with timestamp <= t
        within the view's TTL (nulls where there is none). On-demand features are
        computed from those values and the row's request columns, which
        ``entity_df`` must carry. Pass a ``dask.distributed`` ``client`` to run
        the join on that cluster, or a ``dask.dataframe`` as ``entity_df`` to get
        a lazy dask DataFrame back (for entity sets larger than memory).
        """
        if client is not None and not hasattr(client, "scheduler_info"):
            raise InvalidArgument(f"client must be a dask.distributed Client (p.compute().client), not {client!r}.")
        taken = set(getattr(entity_df, "columns", ()))
        requests = resolve(_feature_refs(features), self.registry.get_view)
        retrieval.refuse_clashes(taken, [c for r in requests for c in r.columns])
        plan = expand(requests, self.registry.get_view)
        if plan.steps:
            plan.check_request(taken)  # before reading anything
        requests, width = plan.reads, len(getattr(entity_df, "columns", ()))
        if type(entity_df).__module__.startswith("dask"):
            joined = retrieval.training_set_lazy(self.offline.url, requests, entity_df, timestamp_field)
            return plan.finish_lazy(joined, width) if plan.steps else joined
        joined = self._join(entity_df, requests, timestamp_field, client)
        return plan.finish_offline(joined, width) if plan.steps else joined

    def join(self, entity_df: pd.DataFrame, reads: Sequence[Sequence[Any]], *,
             timestamp_field: str = "event_timestamp") -> pa.Table:
        """Stored features as of each row of ``entity_df``, one Arrow row per entity row: the point-in-time join
        under :meth:`get_training_set`, without its on-demand steps (server mode asks the server for it).

        Each read is ``(view, version, features, columns)``: those features of that view version, as those columns.
        """
        if not isinstance(reads, (list, tuple)) or not reads:
            raise InvalidArgument("join() takes a list of (view, version, features, columns) reads.")
        requests = [self._request(read) for read in reads]
        retrieval.refuse_clashes(getattr(entity_df, "columns", ()), [c for r in requests for c in r.columns])
        return retrieval.features_at(self.offline, requests, entity_df, timestamp_field)

    def _request(self, read: Any) -> ViewRequest:
        """One read of :meth:`join` as a request, checked against the view's registered definition."""
        if not (isinstance(read, (list, tuple)) and len(read) == 4 and isinstance(read[0], str)
                and isinstance(read[1], int) and all(isinstance(x, (list, tuple)) for x in read[2:])
                and len(read[2]) == len(read[3]) > 0 and all(isinstance(x, str) for x in (*read[2], *read[3]))):
            raise InvalidArgument(f"{read!r} is not a read: give (view, version, [features], [columns]).")
        view = refuse_storage(self.registry.get_view(read[0], read[1]), "join")
        missing = [f for f in read[2] if f not in view.feature_names]
        if missing:
            raise FeatureNotFound(f"View {view.name!r} (v{view.version}) has no feature(s) {missing}; it has "
                                  f"{', '.join(view.feature_names)}.")
        return ViewRequest(view, tuple(read[2]), tuple(read[3]))

    def _join(self, entity_df: pd.DataFrame, requests: list[ViewRequest], timestamp_field: str,
              client: Any) -> pd.DataFrame:
        """The stored views' point-in-time join, in process or on ``client``'s Dask cluster."""
        if client is None:
            return retrieval.training_set(self.offline, requests, entity_df, timestamp_field)
        return retrieval.training_set_on_dask(client, self.offline.url, requests, entity_df, timestamp_field)

    def freshness(self, view: str, version: int | None = None) -> Freshness:
        """The newest event and ingest of a view (default: its latest version) and its materialisation watermark.

        >>> p.features.freshness("driver_stats").age
        Timedelta('0 days 01:12:09')
        """
        return freshness(self.offline, self.registry, self.registry.get_view(view, version))

    def stats(self, view: str, version: int | None = None, window: timedelta | None = timedelta(days=7)) -> ViewStats:
        """Per-feature statistics (null fraction, mean, std, min, max; distinct strings) of recent rows.

        Only events within ``window`` of the view's newest event are read, so
        this stays fast on large views; ``window=None`` reads every row.
        """
        return view_stats(self.offline, self.registry.get_view(view, version), window)

    def quarantine(self, view: str, version: int | None = None) -> pd.DataFrame:
        """Rows ingest or push set aside for breaking expectations, with ``__failed`` and ``__quarantined_at``."""
        return read_quarantine(self.offline, self.registry.get_view(view, version))

    # -- computed (batch) views -------------------------------------------------
    def compute(self, view: str | FeatureView, start: datetime | str | None = None,
                end: datetime | str | None = None, *, client: Any = None, materialize: bool = False,
                force: bool = False, progress: bool | ProgressBar | None = None, sources: Any = None) -> ComputeResult:
        """Run a batch view's transformation over ``[start, end)``, partition by partition, into the offline store.

        Partitions that succeeded before are skipped (a failed backfill resumes), unless ``force``; a
        recomputed partition replaces its rows. With a Dask ``client`` (``p.compute().client``) partitions
        run in parallel on its workers. ``sources`` gives DataFrames (or paths) in place of the view's
        sources; ``start``/``end`` left out compute what is due (see :mod:`mlplat.features.compute`).
        A failure raises TransformationError naming each failed partition; the others stay stored.

        >>> p.features.compute("driver_daily", "2024-01-01", "2024-02-01", client=cluster.client)
        """
        from mlplat.features.compute.runner import run

        definition = self.registry.get_view(getattr(view, "name", view))
        if not isinstance(view, str) and diff_views(definition, keep_ownership(view, definition)):
            raise InvalidArgument(f"{view.name!r} differs from its registered definition (v{definition.version}); "
                                  "apply it first: p.features.apply([view]).")
        bounds = [None if t is None else nanoseconds(t, n) for t, n in ((start, "start"), (end, "end"))]
        result = run(definition, *bounds, log=self.partition_log, offline_url=self.offline.url, audit=self.audit,
                     client=client, force=force, progress=progress, sources=sources)
        if materialize:
            done = self.materialize(views=[definition.name], progress=False)[0]
            result = dataclasses.replace(result, materialized=done)
        return result

    def partitions(self, view: str, version: int | None = None) -> pd.DataFrame:
        """Each computed partition of a batch view (default: its latest version): status, rows, error, times."""
        return self.partition_log.frame(self.registry.get_view(view, version))

    @cached_property
    def partition_log(self) -> PartitionLog:
        """Each computed partition's status (:class:`~mlplat.features.compute.log.PartitionLog`)."""
        from mlplat.features.compute.log import PartitionLog

        return PartitionLog(self.registry.engine)

    def schedule_compute(self, view: str | FeatureView, cron: str | None = None, materialize: bool = False) -> int:
        """Compute a batch view on ``cron`` (default: its ``schedule``) as a notebook job; return the schedule id.

        Each run (``templates/feature_compute.ipynb``) computes the partitions due: those up to the current
        one that have not succeeded yet. ``p.jobs.schedules()`` lists it, ``p.jobs.pause(id)`` stops it.
        """
        from mlplat.features.compute.schedule import schedule

        if self.scheduler is None:
            raise InvalidArgument("schedule_compute needs the platform's jobs; use p.features from mlplat.connect().")
        definition = self.registry.get_view(getattr(view, "name", view))
        return schedule(self.scheduler, definition, cron, materialize)

    # -- online -----------------------------------------------------------------
    def materialize(self, start: datetime | None = None, end: datetime | None = None,
                    views: Sequence[str] | None = None,
                    progress: bool | ProgressBar | None = None) -> list[MaterializeResult]:
        """Write the latest value per entity within TTL of ``end`` (default now) online."""
        now_ns = time.time_ns()
        end_ns = now_ns if end is None else nanoseconds(end, "end")
        start_ns = None if start is None else nanoseconds(start, "start")
        if start_ns is not None and start_ns > end_ns:
            raise InvalidArgument(f"materialize(start={start}, end={end}): start is after end; swap them.")
        if views is not None and not isinstance(views, (str, list, tuple)):
            raise InvalidArgument(f"views={views!r}: give a view name or a list of them, e.g. views=['driver_stats'].")
        if views is None:  # every stored view that can be read (on-demand views store nothing)
            definitions = [d for d in self.registry.usable_views("materialize") if not is_on_demand(d)]
        else:  # unknown, broken or on-demand names fail before any write
            names = [views] if isinstance(views, str) else list(views)
            definitions = [refuse_storage(self.registry.get_view(n), "materialize") for n in names]
        results = []
        with progress_bar(len(definitions), "materialize", progress, unit="view") as bar:
            for view in definitions:
                bar.set_postfix_str(view.name)
                done = materialize_view(self.offline, self.online, self.registry, view, start_ns, end_ns, now_ns)
                self.audit.record("feature_view", view.name, "materialized", view.version, rows_read=done.rows_read,
                                  entities=done.entities, written=done.written, start=start, end=end)
                results.append(done)
                bar.update()
        return results

    def push(self, view: str, df: Any) -> int:
        """Streaming ingestion: append ``df`` offline and update online at once; return rows stored.

        Expectations are checked as on ``ingest``.
        """
        definition = refuse_storage(self.registry.get_view(view), "push")
        table = conform(definition, df)
        refuse_future(definition, table, self.max_clock_skew, "push")
        with screened(self.offline, definition, table) as table:
            self.online.ping()  # fail before writing anything when Redis is down
            self.offline.write(definition, table)
        self._kinds.pop((definition.name, definition.version), None)  # the first write fixes the key kinds
        write_latest(self.online, definition, table, time.time_ns())
        self.audit.record("feature_view", view, "pushed", definition.version, rows=table.num_rows)
        return table.num_rows

    def get_online_features(
        self, features: Sequence[str], entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
        request_data: Mapping[str, Sequence[Any]] | None = None,
    ) -> OnlineFeatures:
        """Latest values for each entity; missing or expired entities give None.

        Each key must be of its view's key kind (int64 or string, see :mod:`mlplat.features.keys`):
        a key that can never name an entity (None, NaN, 1.0, ``"7"`` for an int64 key) raises
        EntityKeyError rather than reading None.

        ``entity_rows`` is a list of dicts (``[{"driver_id": 1}]``) or, faster,
        a dict of columns (``{"driver_id": [1, 2]}``). On-demand features are
        computed from their sources and request data: ``request_data`` (column ->
        one value per entity row) or the same columns in ``entity_rows``.
        """
        features = _feature_refs(features)
        if request_data is not None and not isinstance(request_data, Mapping):
            raise InvalidArgument(f"request_data must map each request column to its values, not "
                                  f"{type(request_data).__name__}: request_data={{'distance_km': [4.2]}}.")
        plan, on_demand = self._plans.get(features) or self._plan(features)
        columns = _entity_columns(entity_rows, plan)
        for request, _ in plan:
            for key, kind in self._key_kinds(request.view).items():
                if key in columns:  # a missing one is reported by read_online
                    keys.check(request.view.name, key, columns[key], kind)
        values = read_online(self.online, plan, columns)
        return OnlineFeatures(on_demand.finish_online(values, columns, request_data) if on_demand else values)

    def key_kinds(self, view: str, version: int | None = None) -> dict[str, str | None]:
        """Each join key's kind as stored (``"int64"`` or ``"string"``, see :mod:`mlplat.features.keys`);
        None before the view's first write."""
        definition = self.registry.get_view(view, version)
        stored = self.offline.key_kinds(definition)
        return {k: stored.get(k) for k in definition.join_keys}

    def _key_kinds(self, view: FeatureView) -> dict[str, str | None]:
        """Each join key's kind (see :meth:`key_kinds`), remembered until this store writes the view."""
        found = self._kinds.get((view.name, view.version))
        if found is None:
            found = self._kinds[(view.name, view.version)] = self.key_kinds(view.name, view.version)
        return found

    def _plan(self, features: Sequence[str]) -> tuple[list[tuple[ViewRequest, RecordCodec]], Expansion | None]:
        expansion = expand(resolve(features, self.registry.get_view), self.registry.get_view)
        plan = [(r, RecordCodec(r.view)) for r in expansion.reads]
        self._plans[tuple(features)] = plan, expansion if expansion.steps else None
        return self._plans[tuple(features)]


def refuse_future(view: FeatureView, table: pa.Table, skew: timedelta, action: str) -> None:
    """FutureEventError when a row of ``table`` is dated later than now plus ``skew``: an event cannot have
    happened yet. Such a row would be served online ahead of every real update of its entity (the newest event
    wins) and expire a TTL after a time that has not come."""
    times = table.column(view.timestamp_field)
    limit = time.time_ns() + skew // timedelta(microseconds=1) * 1000
    ahead = pc.greater(times, pa.scalar(limit, times.type))
    count = pc.sum(ahead).as_py() or 0
    if count:
        rows = pc.indices_nonzero(ahead).to_pylist()
        shown = ", ".join(f"row {i} at {times[i].as_py().isoformat()}" for i in rows[:3])
        now = datetime.fromtimestamp(limit / 1e9, UTC) - skew
        raise FutureEventError(
            f"{action}({view.name!r}) refused {count:,} row(s) dated later than now ({now:%Y-%m-%d %H:%M:%S} UTC) "
            f"plus the allowed clock skew ({skew}): {shown}{' and more' if count > 3 else ''}. Nothing was "
            f"written. Fix their {view.timestamp_field} (a unit or time-zone mistake?), or raise the "
            "max_clock_skew setting (MLPLAT_MAX_CLOCK_SKEW) where producers' clocks run ahead.")


def _searchable(view: FeatureView) -> str:
    fields = [text for f in view.schema for text in (f.name, f.description)]
    tags = [text for item in view.tags.items() for text in item]
    return " ".join([view.name, view.description, *fields, *tags]).lower()


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, not {type(value).__name__}.")
    return value


def _feature_refs(features: Any) -> tuple[str, ...]:
    if isinstance(features, str):
        return (features,)
    if not isinstance(features, (list, tuple)):
        raise FeatureNotFound(f"features must be a list of references such as ['driver_stats:rating'], "
                              f"not {type(features).__name__}.")
    return tuple(features)


def _entity_columns(entity_rows: Any, plan: list[tuple[ViewRequest, RecordCodec]]) -> dict[str, Any]:
    """Entity rows as columns of equal length (lists or numpy arrays), whichever form they came in."""
    if isinstance(entity_rows, Mapping):
        columns = {name: _column(name, values) for name, values in entity_rows.items()}
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgument(f"Entity columns have different lengths ({lengths}); give one value per row in each.")
        return columns
    if isinstance(entity_rows, (str, bytes)) or not isinstance(entity_rows, Sequence):
        raise InvalidArgument(f"entity_rows must be a list of dicts ([{{'driver_id': 1}}]) or a dict of columns "
                              f"({{'driver_id': [1, 2]}}), not {type(entity_rows).__name__}.")
    if not entity_rows:
        return {key: [] for request, _ in plan for key in request.view.join_keys}
    for row, found in enumerate(entity_rows):
        if not isinstance(found, Mapping):
            raise InvalidArgument(f"Entity row {row} is a {type(found).__name__}, not a dict such as {{'driver_id': 1}}.")
    names = list(entity_rows[0])
    try:
        return {name: [row[name] for row in entity_rows] for name in names}
    except KeyError as missing:
        raise MissingColumnError(f"Every entity row needs the same keys; one lacks {missing.args[0]!r}.") from None


def _column(name: Any, values: Any) -> list | np.ndarray:
    """One entity column as a list or a 1-d numpy array."""
    if isinstance(values, pd.Series):
        return values.tolist()  # plain Python values, as a list column gives
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values
    if isinstance(values, (list, tuple)):
        return list(values)
    raise InvalidArgument(f"Entity column {name!r} must be a list of values, one per row, not "
                          f"{type(values).__name__}: write {{{name!r}: [...]}}.")



def _origin(view: FeatureView, data: Any) -> str:
    """Where ingested rows came from, for the audit trail: the file read, or the in-memory type."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return str(view.source if data is None else data)
    return type(data).__name__


def _read(view: FeatureView, data: Any) -> Any:
    """``data`` as given, or read from a Parquet or CSV path (default: the view's source)."""
    if data is None and not view.source:
        raise DefinitionError(
            f"ingest({view.name!r}) was given no data and the view has no source; pass a DataFrame or a "
            "file path, or define the view with source='path/to/data.parquet'."
        )
    path = view.source if data is None else data
    if not isinstance(path, (str, os.PathLike)):
        return data
    try:
        if str(path).lower().endswith(".csv"):
            from pyarrow import csv

            return csv.read_csv(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidArgument(f"Cannot read {path} for view {view.name!r}: {exc}.") from None
