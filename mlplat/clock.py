"""The time the platform takes as now: the system's, or one a test moves instead of sleeping.

``mlplat.connect(clock=...)`` hands a clock to what stamps and windows by wall time (the
prediction log, monitoring checks); anything with a ``time()`` method returning seconds
since the epoch will do.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def time(self) -> float:
        """Seconds since the epoch, now."""


class SystemClock:
    """The machine's clock."""

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
