"""Rate-limited log lines: the first event in full, then one summary per interval.

Anyone who can open a TCP connection, or a dead peer the DHT keeps dialling, can
cause a log line; one line per event lets them fill the disk and bury everything
else.  A :class:`LogSummariser` counts events of one kind and says what to log.
It is pure logic with the clock passed in; the caller logs what it returns and
calls :meth:`LogSummariser.flush` about once per interval so a burst's summary
appears even when no further event comes.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class Summary:
    """``count`` events (not logged one by one) in the last ``seconds``; ``last`` is the
    detail of the latest one."""

    count: int
    seconds: float
    last: str

    def sentence(self, what: str) -> str:
        """E.g. ``refused data connections: 1999 more in the last 60 s (last: ...)``."""
        return f"{what}: {self.count} more in the last {self.seconds:.0f} s (last: {self.last})"


class LogSummariser:
    """Decides which events of one kind are logged in full and when to summarise."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the summary interval must be positive")
        self.interval = interval
        self._window_start: float | None = None
        self._count = 0
        self._last = ""
        self.total = 0

    def record(self, detail: str, now: float) -> tuple[bool, Summary | None]:
        """Count one event at ``now``: (log it in full?, a summary to log first or None).

        An event after a quiet interval is logged in full; the following ones are
        counted and summarised at most once per interval.
        """
        self.total += 1
        if self._window_start is None:
            self._window_start = now
            return True, None
        self._count += 1
        self._last = detail
        return False, self.flush(now)

    def flush(self, now: float) -> Summary | None:
        """The summary of the events counted so far if an interval has passed, else None."""
        if self._window_start is None or now - self._window_start < self.interval:
            return None
        if self._count == 0:
            # A whole interval without a suppressed event: the next one is news again.
            self._window_start = None
            return None
        summary = Summary(self._count, now - self._window_start, self._last)
        self._window_start = now
        self._count = 0
        return summary
