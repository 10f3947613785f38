"""The :class:`BatchFeatureView` definition: a feature view with a transformation over sources.

What the transformation sees and returns is told in :mod:`mlplat.features.compute`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from mlplat.cron import check_cron
from mlplat.errors import DefinitionError, JobError
from mlplat.features import udf
from mlplat.features.definitions import FeatureView, _check_name, _plain

DAY = timedelta(days=1)


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
        before, after = old._transformation_record(), self._transformation_record()
        if _unhashed(before) != _unhashed(after):
            changes.append({"change": "transformation changed", "from": old._transformation_summary(),
                            "to": self._transformation_summary(), "incompatible": True})
        elif "python" in after and "sha256" in after["python"] and "sha256" not in before["python"]:
            changes.append({"change": "transformation hash recorded", "incompatible": False})  # stored before hashes
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


def _unhashed(record: dict[str, Any]) -> dict[str, Any]:
    """A transformation record without its source's hash (which changes only with the source)."""
    return {"python": {k: v for k, v in record["python"].items() if k != "sha256"}} if "python" in record else record


def _describe(function: Any, what: str) -> dict[str, str]:
    if isinstance(function, udf.StoredFunction):  # read from the registry: what was applied, unloaded
        udf.check_hash(function.recorded, what)  # a stored record edited outside mlplat is refused
        return function.recorded
    if not callable(function):
        raise DefinitionError(f"{what} must be a function or a SQL query (a str), not {type(function).__name__}.")
    return udf.describe(function, what)


def _check_cron(cron: Any, where: str) -> None:
    try:
        check_cron(cron)
    except JobError as exc:
        raise DefinitionError(f"{where}: schedule {exc}") from None
