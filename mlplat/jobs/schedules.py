"""Scheduled notebook jobs: cron schedules and the scheduler that runs their due slots.

Every slot a schedule is due (by its cron line) is claimed by inserting a
``(schedule, slot)`` row whose primary key makes a second claim fail. So a
restarted scheduler, or two of them, never run a slot twice; and since due
slots are counted from the last claimed one (or the schedule's creation), a
scheduler that was down catches up and skips none.

A claim is a lease, renewed while its job runs. When the scheduler holding it
dies (kill -9, a lost machine) the lease runs out, and the next scheduler to
look claims the slot again and runs its job, up to ``reclaims`` times; then the
slot fails, saying so. Claims are numbered and a runner's every write names its
number, so a runner that lost its lease can no longer change the slot.

One schedule's trouble is that schedule's alone: a job that fails ends its slot
``failed``, and a schedule that cannot run (its cron line, parameters, notebook
or kernel went bad after it was made) is marked broken, with the reason, and
skipped until it is resumed (and checked again) or unscheduled.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlplat.cron import check_cron, next_run
from mlplat.db import metadata
from mlplat.errors import JobError, JobFailed, ScheduleNotFound
from mlplat.times import as_utc

log = logging.getLogger(__name__)

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


def schedule(platform: Any, notebook: str | Path, cron: str, parameters: dict[str, Any] | None = None,
             kernel: str | None = None) -> int:
    """Register a cron schedule for a notebook (checked now, not at 3 a.m.); return its id."""
    check_cron(cron)
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
    next_run: datetime | None  # None while paused or broken
    last_slot: datetime | None
    last_status: str | None  # "running", "succeeded" or "failed"
    broken: str | None  # why it cannot run (fix it, then resume it); None while it can
    last_error: str | None  # why the last slot failed


def schedules(platform: Any) -> list[Schedule]:
    """Every schedule, oldest first; one that cannot run is listed with why (``broken``)."""
    now = datetime.now(UTC)
    with platform.engine.connect() as conn:
        found = []
        for row in conn.execute(sa.select(schedules_table).order_by(schedules_table.c.id)).all():
            last = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == row.id)
                                .order_by(slots_table.c.slot.desc()).limit(1)).first()
            broken = _problem(row)
            try:
                parameters = _parameters(row.parameters)
            except JobError:  # broken says so
                parameters = {}
            found.append(Schedule(
                row.id, row.notebook, row.cron, parameters, row.kernel, row.enabled, row.created_by, row.team or "",
                next_run(row.cron, now) if row.enabled and not broken else None,
                as_utc(last.slot) if last else None, last.status if last else None, broken,
                last.error if last else None))
    return found


def schedule_of(platform: Any, schedule_id: int) -> Schedule:
    """One schedule by id."""
    for found in schedules(platform):
        if found.id == schedule_id:
            return found
    raise ScheduleNotFound(f"No schedule {schedule_id}; see p.jobs.schedules() for their ids.")


def set_enabled(platform: Any, schedule_id: int, enabled: bool) -> None:
    """Pause or resume a schedule; a resumed schedule skips the slots it missed while paused.

    Resuming checks the schedule again as when it was made (cron line, notebook, parameters, kernel),
    so a broken schedule that was fixed runs again, and one still broken is refused, saying why.
    """
    found, audit = schedule_of(platform, schedule_id), platform.audit
    changes: dict[str, Any] = {"enabled": enabled}
    if enabled:
        with platform.engine.connect() as conn:
            row = conn.execute(sa.select(schedules_table).where(schedules_table.c.id == schedule_id)).one()
        try:
            check_cron(row.cron)
            platform.jobs._check(Path(row.notebook), _parameters(row.parameters), row.kernel)
        except JobError as exc:
            raise JobError(f"Schedule {schedule_id} cannot run: {exc} Fix that and resume it again, or "
                           f"unschedule it.") from None
        changes.update(resumed_at=datetime.now(UTC), broken=None)
    with platform.engine.begin() as conn:
        conn.execute(schedules_table.update().where(schedules_table.c.id == schedule_id).values(**changes))
        audit.write(conn, "schedule", Path(found.notebook).name, "resumed" if enabled else "paused",
                    schedule=schedule_id)


def unschedule(platform: Any, schedule_id: int) -> None:
    """Delete a schedule and its slots; the runs it made stay in the job history."""
    found, audit = schedule_of(platform, schedule_id), platform.audit
    with platform.engine.begin() as conn:
        conn.execute(slots_table.delete().where(slots_table.c.schedule_id == schedule_id))
        conn.execute(schedules_table.delete().where(schedules_table.c.id == schedule_id))
        audit.write(conn, "schedule", Path(found.notebook).name, "deleted", schedule=schedule_id, cron=found.cron,
                    notebook=found.notebook, parameters=found.parameters)


@dataclass(frozen=True)
class _Claim:
    """A slot this scheduler holds: the schedule (its row), the slot, and the claim's number."""

    schedule: dict[str, Any]
    slot: datetime
    number: int


class Scheduler:
    """Runs due slots of every enabled schedule, at most ``max_concurrent`` jobs at a time.

    A claim holds for ``lease`` seconds and is renewed every third of that while its job runs; a slot
    whose scheduler died is claimed again at most ``reclaims`` times, then fails.
    """

    def __init__(self, platform: Any, max_concurrent: int = 2, lease: float = 30.0, reclaims: int = 2):
        self.platform = platform
        self.engine = platform.engine
        self.max_concurrent = max_concurrent
        self.lease = lease
        self.reclaims = reclaims
        self.heartbeat: Path | None = None  # touched on every look and lease renewal (see serve)

    def due(self, now: datetime) -> list[tuple[dict[str, Any], datetime]]:
        """Every (schedule, slot) that is due by ``now`` and not claimed yet, oldest first.

        A schedule that cannot run is marked broken and skipped.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schedules_table).where(
                schedules_table.c.enabled, schedules_table.c.broken.is_(None))).all()
            last_slots = dict(conn.execute(sa.select(slots_table.c.schedule_id, sa.func.max(slots_table.c.slot))
                                           .group_by(slots_table.c.schedule_id)).all())
        found = []
        for row in rows:
            problem = _problem(row)
            if problem:
                self._break(row.id, row.notebook, problem)
                continue
            start = max(as_utc(t) for t in (last_slots.get(row.id), row.created_at, row.resumed_at) if t is not None)
            slot = next_run(row.cron, start)
            while slot <= now:
                found.append((row._asdict(), slot))
                slot = next_run(row.cron, slot)
        return sorted(found, key=lambda item: item[1])

    def tick(self, now: datetime | None = None) -> list[str]:
        """Claim the due slots and those whose scheduler died, run their jobs; return the ids of the job runs."""
        claims = self._reclaim() + [_Claim(s, slot, 1) for s, slot in self.due(now or datetime.now(UTC))
                                    if self._claim(s["id"], slot)]
        with ThreadPoolExecutor(self.max_concurrent) as pool:
            running = [(claim, pool.submit(self._run, claim)) for claim in claims]
            self._renew_until_done(running)
        return [job_id for _, future in running if (job_id := future.result())]

    def serve(self, interval: float = 30.0, stop: threading.Event | None = None, heartbeat: Path | None = None) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set (the ``mlplat scheduler`` loop)."""
        stop = stop or threading.Event()
        self.heartbeat = heartbeat
        while not stop.is_set():
            self._beat()
            try:
                self.tick()
            except Exception:  # the metadata database away for a moment, say: look again next time
                log.exception("scheduler: a look for due jobs failed; trying again in %.0f s", interval)
            stop.wait(interval)

    # -- claims and leases -------------------------------------------------------------------------------
    def _claim(self, schedule_id: int, slot: datetime) -> bool:
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                conn.execute(slots_table.insert().values(schedule_id=schedule_id, slot=slot, status="running",
                                                         claimed_at=now, lease_until=now + self._lease, claims=1))
            return True
        except sa.exc.IntegrityError:  # another scheduler (or an earlier life of this one) has it
            return False

    def _reclaim(self) -> list[_Claim]:
        """Claim again the running slots whose lease ran out (their scheduler died); fail those it did too often."""
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            expired = conn.execute(sa.select(slots_table).where(slots_table.c.status == "running", _expired(now))).all()
            owners = {row.id: row._asdict() for row in conn.execute(sa.select(schedules_table).where(
                schedules_table.c.id.in_({slot.schedule_id for slot in expired})))}
        claims = []
        for slot in expired:
            if slot.schedule_id not in owners:  # unscheduled meanwhile
                continue
            held = _Claim(owners[slot.schedule_id], as_utc(slot.slot), slot.claims)
            if slot.claims > self.reclaims:
                self._finish(held, "failed", slot.job_id, f"the scheduler running it died {slot.claims} times")
                continue
            with self.engine.begin() as conn:
                taken = conn.execute(self._where(held).where(_expired(now)).values(
                    claims=slot.claims + 1, claimed_at=now, lease_until=now + self._lease)).rowcount
            if taken:
                log.warning("scheduler: schedule %s's slot %s lost its scheduler; running it again (claim %d)",
                            slot.schedule_id, held.slot, slot.claims + 1)
                claims.append(_Claim(held.schedule, held.slot, slot.claims + 1))
        return claims

    def _renew_until_done(self, running: list[tuple[_Claim, Future]]) -> None:
        """Renew the lease of every claim whose job has not ended (queued ones too) until all have."""
        pending = {future for _, future in running}
        while pending:
            _, pending = wait(pending, timeout=self.lease / 3)
            try:
                with self.engine.begin() as conn:
                    for claim, future in running:
                        if future in pending:
                            conn.execute(self._where(claim).values(lease_until=datetime.now(UTC) + self._lease))
                self._beat()
            except sa.exc.SQLAlchemyError as exc:  # the lease outlasts a missed renewal or two
                log.warning("scheduler: could not renew leases (%s); trying again", exc)

    def _run(self, claim: _Claim) -> str | None:
        """Run a claimed slot's job and record how it ended; whatever it raises, the slot ends and others run on."""
        schedule, job_id, error = claim.schedule, None, None
        try:
            job_id = self.platform.jobs.run(schedule["notebook"], _parameters(schedule["parameters"]),
                                            schedule["kernel"], owner=(schedule["created_by"], schedule["team"] or "")).id
        except JobFailed as exc:
            job_id, error = exc.job_id, str(exc)
        except JobError as exc:  # it cannot run at all: its notebook, kernel or parameters went bad
            error = str(exc)
            self._break(schedule["id"], schedule["notebook"], error)
        except Exception as exc:  # the tracking store away, say: this slot fails, the scheduler goes on
            log.exception("scheduler: schedule %s's slot %s failed", schedule["id"], claim.slot)
            error = f"{type(exc).__name__}: {exc}"
        self._finish(claim, "failed" if error else "succeeded", job_id, error)
        return job_id

    def _finish(self, claim: _Claim, status: str, job_id: str | None, error: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._where(claim).values(status=status, job_id=job_id, error=error, lease_until=None))

    def _break(self, schedule_id: int, notebook: str, reason: str) -> None:
        """Mark a schedule broken (skipped until resumed), with why, once."""
        with self.engine.begin() as conn:
            changed = conn.execute(schedules_table.update().where(
                schedules_table.c.id == schedule_id, schedules_table.c.broken.is_(None)).values(broken=reason)).rowcount
            if changed:
                self.platform.audit.write(conn, "schedule", Path(notebook).name, "broken", reason=reason,
                                          schedule=schedule_id)
        log.warning("scheduler: schedule %s is broken and skipped: %s", schedule_id, reason)

    def _where(self, claim: _Claim) -> sa.Update:
        """An update of ``claim``'s slot that changes nothing once another scheduler has claimed it again."""
        return slots_table.update().where(
            slots_table.c.schedule_id == claim.schedule["id"], slots_table.c.slot == claim.slot,
            slots_table.c.status == "running", slots_table.c.claims == claim.number)

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.lease)

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.touch()


def _expired(now: datetime) -> sa.ColumnElement[bool]:
    # A slot claimed before leases existed has none: its scheduler is gone.
    return sa.or_(slots_table.c.lease_until < now, slots_table.c.lease_until.is_(None))


def _problem(row: Any) -> str | None:
    """Why the scheduler cannot run a schedule row (marked broken, or its cron line or parameters bad), or None."""
    if row.broken:
        return row.broken
    try:
        check_cron(row.cron)
        _parameters(row.parameters)
    except JobError as exc:
        return str(exc)
    return None


def _parameters(text: str) -> dict[str, Any]:
    try:
        parameters = json.loads(text)
    except ValueError:
        parameters = None
    if not isinstance(parameters, dict):
        raise JobError(f"its parameters {text!r} are not a JSON object; unschedule it and schedule the notebook "
                       "again.")
    return parameters


def slots_of(platform: Any, schedule_id: int) -> list[dict[str, Any]]:
    """The claimed slots of a schedule, oldest first."""
    with platform.engine.connect() as conn:
        rows = conn.execute(sa.select(slots_table).where(slots_table.c.schedule_id == schedule_id)
                            .order_by(slots_table.c.slot))
        return [{**r._asdict(), "slot": as_utc(r.slot)} for r in rows]
