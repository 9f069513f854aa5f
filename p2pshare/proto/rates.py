"""A rate over a sliding window, with the time passed in (no clock here).

Live transfer rates (``p2pshare status``, ``peers``, ``top``) count bytes into a
:class:`RateWindow` as they move and read bytes per second over the last few
seconds.  The window is cut into buckets, so memory stays at ``buckets`` pairs
however much traffic passes, and an amount leaves the rate as a whole bucket
ages out: the rate is exact to within one bucket width of the window's edge.
"""

from __future__ import annotations

import math
from collections import deque


class RateWindow:
    """Amount per second over the last ``window`` seconds, in ``buckets`` steps."""

    def __init__(self, window: float = 10.0, buckets: int = 10) -> None:
        if not math.isfinite(window) or window <= 0 or buckets < 1:
            raise ValueError("a rate window needs a positive window and at least one bucket")
        self.window = window
        self._width = window / buckets
        self._buckets = buckets
        # (bucket number, amount); bucket numbers only grow, oldest first.
        self._counts: deque[tuple[int, int]] = deque()

    def add(self, now: float, amount: int) -> None:
        """Count ``amount`` at time ``now`` (seconds, any origin, not decreasing).

        A time earlier than the newest bucket (two threads reading one clock) counts
        in the newest bucket: the rate never loses an amount to such a race.
        """
        number = math.floor(now / self._width)
        if self._counts and number <= self._counts[-1][0]:
            last, total = self._counts[-1]
            self._counts[-1] = (last, total + amount)
        else:
            self._counts.append((number, amount))
        self._expire(number)

    def rate(self, now: float) -> float:
        """Amount per second over the window ending at ``now``."""
        number = math.floor(now / self._width)
        self._expire(number)
        return sum(total for _, total in self._counts) / self.window

    def _expire(self, number: int) -> None:
        oldest = number - self._buckets + 1
        while self._counts and self._counts[0][0] < oldest:
            self._counts.popleft()
