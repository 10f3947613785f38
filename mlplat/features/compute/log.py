"""The partition log: the ``feature_compute_partitions`` table, each computed partition's status, rows and error.

``p.features.partitions(view)`` reads it; computing a range again skips what it says succeeded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.features.compute.partitions import Outcome, label
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.definitions import FeatureView

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
