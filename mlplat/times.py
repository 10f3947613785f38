"""Times as users give them and as the stores read them back, all in UTC.

Users pass datetimes or ISO text (naive ones are UTC); databases hand back datetimes
without a zone (SQLite). Every part of the platform reads them through these three
functions, so a time means the same thing, and is refused with the same words, everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlplat.errors import InvalidArgument


def timestamp(moment: Any, name: str) -> Any:
    """``moment`` (a datetime, or text such as ``'2024-01-31'``) as a UTC ``pandas.Timestamp``; ``name`` is the
    argument it came in, for the error a bad one raises."""
    import pandas as pd

    if isinstance(moment, str):
        try:
            moment = pd.Timestamp(moment)
        except (ValueError, OverflowError):
            raise InvalidArgument(f"{name}={moment!r} is not a date or time (not an ISO date such as "
                                  "'2024-01-31', nor a datetime).") from None
    if not isinstance(moment, datetime) or pd.isna(moment):
        raise InvalidArgument(f"{name} must be a datetime (naive times are taken as UTC), not {moment!r}.")
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def nanoseconds(moment: Any, name: str) -> int:
    """``moment`` as nanoseconds since the epoch (how the stores keep event times); see :func:`timestamp`."""
    import pandas as pd

    try:
        return int(timestamp(moment, name).as_unit("ns").value)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        raise InvalidArgument(f"{name}={moment} is outside the times mlplat stores (nanoseconds: "
                              f"{pd.Timestamp.min.year + 1} to {pd.Timestamp.max.year - 1}).") from None


def as_utc(moment: datetime) -> datetime:
    """A datetime read back from a database, as UTC (SQLite drops the zone; naive means UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
