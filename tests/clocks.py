"""A clock tests can move (``mlplat.connect(clock=...)``) instead of sleeping until a window has passed."""

from __future__ import annotations

import time


class SkippingClock:
    """The system's time plus what a test skipped ahead: a window passes without sleeping through it, and
    time still moves between calls as it does for users."""

    def __init__(self):
        self.skipped = 0.0

    def time(self) -> float:
        return time.time() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds
