"""Durations as people write them: ``"1h"``, ``"5min"``, ``"30s"``, ``"1d"``, ``"500ms"``, or a timedelta."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from mlplat.errors import InvalidArgument, MlplatError

_UNITS = {"ms": 1e-3, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_duration(value: Any, what: str, allow_zero: bool = False, seconds: bool = False,
                   error: type[MlplatError] = InvalidArgument) -> timedelta:
    """The duration ``value`` names; a bare number is seconds when ``seconds`` is set.

    Anything else (``"an hour"``, a negative time, a fraction of a millisecond)
    raises ``error``, naming ``what`` and the bad value.
    """
    duration = None
    try:
        if isinstance(value, timedelta):
            duration = value
        elif isinstance(value, str) and (match := _DURATION.match(value.lower())) and match.group(2) in _UNITS:
            duration = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        elif seconds and isinstance(value, int | float) and not isinstance(value, bool):
            duration = timedelta(seconds=value)
    except (OverflowError, ValueError):  # NaN, infinity, or beyond what a timedelta holds
        duration = None
    if duration is None or duration < timedelta(0) or (duration == timedelta(0) and not allow_zero) \
            or duration % timedelta(milliseconds=1):
        least = "zero or more" if allow_zero else "more than zero"
        raise error(f"{what}={value!r} is not a duration; write e.g. '1h', '5min', '30s', '1d'"
                    f"{', a number of seconds' if seconds else ''} or timedelta(hours=1) ({least}, in whole "
                    "milliseconds).")
    return duration
