"""Notebooks on cron schedules: the schedules and slot tables, and making, listing, pausing and deleting schedules.

A schedule is checked when it is made, and again when it is resumed (its cron line, notebook,
parameters and kernel). One that went bad later (see :func:`problem`) is marked broken by the
scheduler (:mod:`mlplat.jobs.scheduler`) and listed with why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlplat.audit import Audit
from mlplat.cron import check_cron, next_run
from mlplat.db import metadata
from mlplat.errors import JobError, ScheduleNotFound
from mlplat.jobs.notebooks import check_notebook
from mlplat.times import as_utc

# The schema is Alembic's: change it with a new revision in mlplat/migrations/versions.
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
    sa.Column("broken", sa.Text),  # why the scheduler skips it; None while it can run
)
slots_table = sa.Table(
    "job_slots", metadata,
    sa.Column("schedule_id", sa.Integer, primary_key=True),
    sa.Column("slot", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("job_id", sa.String(32)),
    sa.Column("status", sa.String(20), nullable=False),  # "running", "succeeded" or "failed"
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True)),  # the claim holds until then
    sa.Column("claims", sa.Integer, nullable=False, server_default="1"),  # schedulers that took it, so far
    sa.Column("error", sa.Text),  # why it failed
)


def schedule(engine: sa.Engine, audit: Audit, notebook: str | Path, cron: str,
             parameters: dict[str, Any] | None = None, kernel: str | None = None) -> int:
    """Register a cron schedule for a notebook (checked now, not at 3 a.m.), made by ``audit``'s user; return
    its id."""
    check_cron(cron)
    source = Path(notebook).resolve()
    parameters = dict(parameters or {})
    kernel = check_notebook(source, parameters, kernel)
    with engine.begin() as conn:
        schedule_id = conn.execute(schedules_table.insert().values(
            notebook=str(source), cron=cron, parameters=json.dumps(parameters, default=str), kernel=kernel,
            created_at=datetime.now(UTC), created_by=audit.user, team=audit.team,
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
    next_run: datetime | None  # None while paused or broken
    last_slot: datetime | None
    last_status: str | None  # "running", "succeeded" or "failed"
    broken: str | None  # why it cannot run (fix it, then resume it); None while it can
    last_error: str | None  # why the last slot failed


def schedules(engine: sa.Engine) -> list[Schedule]:
    """Every schedule, oldest first; one that cannot run is listed with why (``broken``)."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        found = []
        for row in conn.execute(sa.select(schedules_table).order_by(schedules_table.c.id)).all():
            last = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == row.id)
                                .order_by(slots_table.c.slot.desc()).limit(1)).first()
            broken = problem(row)
            try:
                parameters = parameters_of(row.parameters)
            except JobError:  # broken says so
                parameters = {}
            found.append(Schedule(
                row.id, row.notebook, row.cron, parameters, row.kernel, row.enabled, row.created_by, row.team or "",
                next_run(row.cron, now) if row.enabled and not broken else None,
                as_utc(last.slot) if last else None, last.status if last else None, broken,
                last.error if last else None))
    return found


def schedule_of(engine: sa.Engine, schedule_id: int) -> Schedule:
    """One schedule by id."""
    for found in schedules(engine):
        if found.id == schedule_id:
            return found
    raise ScheduleNotFound(f"No schedule {schedule_id}; see p.jobs.schedules() for their ids.")


def set_enabled(engine: sa.Engine, audit: Audit, schedule_id: int, enabled: bool) -> None:
    """Pause or resume a schedule; a resumed schedule skips the slots it missed while paused.

    Resuming checks the schedule again as when it was made (cron line, notebook, parameters, kernel),
    so a broken schedule that was fixed runs again, and one still broken is refused, saying why.
    """
    found = schedule_of(engine, schedule_id)
    changes: dict[str, Any] = {"enabled": enabled}
    if enabled:
        with engine.connect() as conn:
            row = conn.execute(sa.select(schedules_table).where(schedules_table.c.id == schedule_id)).one()
        try:
            check_cron(row.cron)
            check_notebook(Path(row.notebook), parameters_of(row.parameters), row.kernel)
        except JobError as exc:
            raise JobError(f"Schedule {schedule_id} cannot run: {exc} Fix that and resume it again, or "
                           f"unschedule it.") from None
        changes.update(resumed_at=datetime.now(UTC), broken=None)
    with engine.begin() as conn:
        conn.execute(schedules_table.update().where(schedules_table.c.id == schedule_id).values(**changes))
        audit.write(conn, "schedule", Path(found.notebook).name, "resumed" if enabled else "paused",
                    schedule=schedule_id)


def unschedule(engine: sa.Engine, audit: Audit, schedule_id: int) -> None:
    """Delete a schedule and its slots; the runs it made stay in the job history."""
    found = schedule_of(engine, schedule_id)
    with engine.begin() as conn:
        conn.execute(slots_table.delete().where(slots_table.c.schedule_id == schedule_id))
        conn.execute(schedules_table.delete().where(schedules_table.c.id == schedule_id))
        audit.write(conn, "schedule", Path(found.notebook).name, "deleted", schedule=schedule_id, cron=found.cron,
                    notebook=found.notebook, parameters=found.parameters)


def problem(row: Any) -> str | None:
    """Why the scheduler cannot run a schedule row (marked broken, or its cron line or parameters bad), or None."""
    if row.broken:
        return row.broken
    try:
        check_cron(row.cron)
        parameters_of(row.parameters)
    except JobError as exc:
        return str(exc)
    return None


def parameters_of(text: str) -> dict[str, Any]:
    """A schedule row's parameters; JobError when they are not a JSON object."""
    try:
        parameters = json.loads(text)
    except ValueError:
        parameters = None
    if not isinstance(parameters, dict):
        raise JobError(f"its parameters {text!r} are not a JSON object; unschedule it and schedule the notebook "
                       "again.")
    return parameters


def slots_of(engine: sa.Engine, schedule_id: int) -> list[dict[str, Any]]:
    """The claimed slots of a schedule, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == schedule_id)
                            .order_by(slots_table.c.slot))
        return [{**r._asdict(), "slot": as_utc(r.slot)} for r in rows]
