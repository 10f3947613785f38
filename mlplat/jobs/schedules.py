"""Scheduled notebook jobs: cron schedules and the scheduler that runs their due slots.

Every slot a schedule is due (by croniter) is claimed by inserting a
``(schedule, slot)`` row whose primary key makes a second claim fail. So a
restarted scheduler, or two of them, never run a slot twice; and since due
slots are counted from the last claimed one (or the schedule's creation), a
scheduler that was down catches up and skips none.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlplat.errors import JobError, JobFailed
from mlplat.features.registry import metadata
from mlplat.jobs.runs import as_utc

schedules_table = sa.Table(
    "job_schedules", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("notebook", sa.Text, nullable=False),
    sa.Column("cron", sa.String(100), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("kernel", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200)),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("resumed_at", sa.DateTime(timezone=True)),  # slots missed while paused are skipped
)
slots_table = sa.Table(
    "job_slots", metadata,
    sa.Column("schedule_id", sa.Integer, primary_key=True),
    sa.Column("slot", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("job_id", sa.String(32)),
    sa.Column("status", sa.String(20), nullable=False),  # "running", "succeeded" or "failed"
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
)


def schedule(platform: Any, notebook: str | Path, cron: str, parameters: dict[str, Any] | None = None,
             kernel: str | None = None) -> int:
    """Register a cron schedule for a notebook (checked now, not at 3 a.m.); return its id."""
    from croniter import croniter

    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise JobError(f"{cron!r} is not a cron expression; write five fields, e.g. '0 * * * *' (hourly).")
    source = Path(notebook).resolve()
    parameters = dict(parameters or {})
    kernel = platform.jobs._check(source, parameters, kernel)
    audit = platform.audit
    with platform.engine.begin() as conn:
        schedule_id = conn.execute(schedules_table.insert().values(
            notebook=str(source), cron=cron, parameters=json.dumps(parameters, default=str), kernel=kernel,
            created_at=datetime.now(UTC), created_by=platform.settings.user, team=platform.settings.team,
            enabled=True)).inserted_primary_key[0]
        audit.write(conn, "schedule", source.name, "created", schedule=schedule_id, cron=cron, notebook=str(source),
                    parameters=parameters)
    return schedule_id


@dataclass(frozen=True)
class Schedule:
    """A notebook on a cron schedule, with when it runs next and how its last slot went."""

    id: int
    notebook: str
    cron: str
    parameters: dict[str, Any]
    kernel: str
    enabled: bool
    created_by: str
    team: str
    next_run: datetime | None  # None while paused
    last_slot: datetime | None
    last_status: str | None  # "running", "succeeded" or "failed"


def schedules(platform: Any) -> list[Schedule]:
    """Every schedule, oldest first."""
    from croniter import croniter

    now = datetime.now(UTC)
    with platform.engine.connect() as conn:
        found = []
        for row in conn.execute(sa.select(schedules_table).order_by(schedules_table.c.id)):
            last = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == row.id)
                                .order_by(slots_table.c.slot.desc()).limit(1)).first()
            found.append(Schedule(row.id, row.notebook, row.cron, json.loads(row.parameters), row.kernel, row.enabled,
                                  row.created_by, row.team or "", croniter(row.cron, now).get_next(datetime) if row.enabled else None,
                                  as_utc(last.slot) if last else None, last.status if last else None))
    return found


def schedule_of(platform: Any, schedule_id: int) -> Schedule:
    """One schedule by id."""
    for found in schedules(platform):
        if found.id == schedule_id:
            return found
    raise JobError(f"No schedule {schedule_id}; see p.jobs.schedules() for their ids.")


def set_enabled(platform: Any, schedule_id: int, enabled: bool) -> None:
    """Pause or resume a schedule; a resumed schedule skips the slots it missed while paused."""
    found, audit = schedule_of(platform, schedule_id), platform.audit
    resumed = {"resumed_at": datetime.now(UTC)} if enabled else {}
    with platform.engine.begin() as conn:
        conn.execute(schedules_table.update().where(schedules_table.c.id == schedule_id)
                     .values(enabled=enabled, **resumed))
        audit.write(conn, "schedule", Path(found.notebook).name, "resumed" if enabled else "paused",
                    schedule=schedule_id)


class Scheduler:
    """Runs due slots of every enabled schedule, at most ``max_concurrent`` jobs at a time."""

    def __init__(self, platform: Any, max_concurrent: int = 2):
        self.platform = platform
        self.engine = platform.engine
        self.max_concurrent = max_concurrent
        metadata.create_all(self.engine, tables=[schedules_table, slots_table])

    def due(self, now: datetime) -> list[tuple[dict[str, Any], datetime]]:
        """Every (schedule, slot) that is due by ``now`` and not claimed yet, oldest first."""
        from croniter import croniter

        found = []
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(schedules_table).where(schedules_table.c.enabled)):
                last = conn.execute(sa.select(sa.func.max(slots_table.c.slot))
                                    .where(slots_table.c.schedule_id == row.id)).scalar()
                start = max(as_utc(t) for t in (last, row.created_at, row.resumed_at) if t is not None)
                slots = croniter(row.cron, start)
                slot = slots.get_next(datetime)
                while slot <= now:
                    found.append((row._asdict(), slot))
                    slot = slots.get_next(datetime)
        return sorted(found, key=lambda item: item[1])

    def tick(self, now: datetime | None = None) -> list[str]:
        """Claim and run the due slots; return the ids of the job runs started."""
        now = now or datetime.now(UTC)
        claimed = [(s, slot) for s, slot in self.due(now) if self._claim(s["id"], slot)]
        with ThreadPoolExecutor(self.max_concurrent) as pool:
            return [job_id for job_id in pool.map(lambda item: self._run(*item), claimed) if job_id]

    def serve(self, interval: float = 30.0, stop: threading.Event | None = None, heartbeat: Path | None = None) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set (the ``mlplat scheduler`` loop)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if heartbeat is not None:
                heartbeat.touch()
            self.tick()
            stop.wait(interval)

    def _claim(self, schedule_id: int, slot: datetime) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(slots_table.insert().values(schedule_id=schedule_id, slot=slot, status="running",
                                                         claimed_at=datetime.now(UTC)))
            return True
        except sa.exc.IntegrityError:  # another scheduler (or an earlier life of this one) has it
            return False

    def _run(self, schedule_row: dict[str, Any], slot: datetime) -> str | None:
        parameters = json.loads(schedule_row["parameters"])
        try:
            job = self.platform.jobs.run(schedule_row["notebook"], parameters, schedule_row["kernel"])
            job_id, status = job.id, "succeeded"
        except (JobFailed, JobError):
            latest = self.platform.jobs.history(schedule_row["notebook"])
            job_id, status = (latest[0].id if latest else None), "failed"
        with self.engine.begin() as conn:
            conn.execute(slots_table.update().where(slots_table.c.schedule_id == schedule_row["id"],
                                                    slots_table.c.slot == slot).values(job_id=job_id, status=status))
        return job_id



def slots_of(platform: Any, schedule_id: int) -> list[dict[str, Any]]:
    """The claimed slots of a schedule, oldest first."""
    with platform.engine.connect() as conn:
        rows = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == schedule_id)
                            .order_by(slots_table.c.slot))
        return [{**r._asdict(), "slot": as_utc(r.slot)} for r in rows]

