"""Cron lines: the one check that a schedule's cron line can run, and when it fires next.

Job schedules and batch feature views' ``schedule=`` both use :func:`check_cron`, so a line
is judged the same wherever it is given. Times are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlplat.errors import JobError

_FORMAT = ("write five fields (minute hour day-of-month month day-of-week, UTC), e.g. '0 2 * * *' "
           "(daily at 02:00) or '*/15 * * * *'")


def check_cron(cron: Any) -> str:
    """Return ``cron`` if the scheduler can run it; raise JobError saying why not.

    Refused: anything but five fields (or an alias such as ``@daily``), the six- and seven-field forms
    (seconds, years), and lines that never fire, such as ``0 0 30 2 *`` (30 February).
    """
    if not isinstance(cron, str) or not cron.strip():
        raise JobError(f"{cron!r} is not a cron expression; {_FORMAT}.")
    fields = cron.split()
    if len(fields) in (6, 7):
        raise JobError(f"{cron!r} has {len(fields)} fields, but schedules take five (no seconds or years); "
                       f"{_FORMAT}.")
    if len(fields) != 5 and not (len(fields) == 1 and cron.startswith("@")):
        raise JobError(f"{cron!r} is not a cron expression; {_FORMAT}.")
    try:
        from croniter import croniter
    except ImportError:  # checked again where it is scheduled, which needs the jobs extra anyway
        return cron
    if not croniter.is_valid(cron):
        raise JobError(f"{cron!r} is not a cron expression; {_FORMAT}.")
    next_run(cron, datetime.now(UTC))
    return cron


def next_run(cron: str, after: datetime) -> datetime:
    """The first time ``cron`` fires after ``after``; JobError when it never does."""
    from croniter import CroniterBadDateError, croniter

    try:
        return croniter(cron, after).get_next(datetime)
    except CroniterBadDateError:
        raise JobError(f"{cron!r} never fires: no date has that day of the month in those months "
                       f"(such as 30 February); {_FORMAT}.") from None
