"""py-libp2p's logging: quiet, and its known noise about gone peers summarised.

py-libp2p 0.8.1 logs a WARNING or ERROR each time it fails to reach a peer that
has gone away (a dial refused from the negative cache, a DHT stream that cannot
open, an ADD_PROVIDER that cannot be sent): 3 to 6 lines per share or job once
one peer of the routing table is gone, which buried everything else in the field
test.  :class:`Libp2pNoiseFilter` lets the first such line of a kind through and
then counts them; :meth:`Libp2pNoiseFilter.flush` (called by the daemon about
once per interval) returns one summary per kind.  Its relay and DCUtR also log an
ERROR for every reservation or relayed stream that ends normally; those are
summarised the same way.  A connection set-up that was cancelled (a dial's deadline,
the node stopping) is not logged at all.  Unknown libp2p warnings pass.

Only p2pshare.net imports libp2p; its import turns propagation of the "libp2p"
logger off, which :func:`quiet_libp2p_logging` undoes after importing it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

from p2pshare.net.logsummary import LogSummariser

if TYPE_CHECKING:
    from collections.abc import Callable

# A gone peer shows up in the DHT table for a while; a summary every 10 minutes
# keeps an hour of a quiet node's log on one screen.
NOISE_INTERVAL = 600.0

# (what the summary calls them, the message they match)
KNOWN_NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("dials skipped: peer recently unreachable", re.compile(r"\(negative cache\)")),
    ("DHT streams to unreachable peers", re.compile(r"^Failed to open stream to ")),
    ("ADD_PROVIDER not sent to unreachable peers", re.compile(r"^Error sending ADD_PROVIDER")),
    ("dials to unreachable peers", re.compile(r"^Failed to open TCP stream: ")),
    ("connections that failed their handshake", re.compile(r"failed to upgrade security")),
    # Relay v2 and DCUtR log an ERROR each time a reservation or circuit stream ends the
    # ordinary way: closed (an empty message: StreamEOF has none) or reset by the peer.
    (
        "relay and DCUtR streams closed by their peer",
        re.compile(
            r"^(Error reading from hop stream from \S+|Unexpected error reading from stream"
            r"|Error relaying data|Error writing to destination stream"
            r"|Error sending (stop )?status message|Unexpected error handling hop stream from \S+"
            r"|Error in DCUtR protocol with peer \S+): ?"
            r"(Cannot (read from|write to) stream; (stream is reset|closed for writing))?$"
        ),
    ),
)


# Warnings that say nothing went wrong: py-libp2p logs the cancellation of a connection
# being set up, with its whole traceback, whether a dial gave up at its deadline or the
# node is stopping.
NOT_WARNINGS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\[ADDCONN_FAIL\] add_conn failed for peer \S+: Cancelled\("),
)


class Libp2pNoiseFilter(logging.Filter):
    """A handler filter: libp2p's known noise about gone peers, summarised.

    Put the same instance on every handler: a record seen by the second handler
    gets the decision made for the first, so nothing is counted twice.
    """

    def __init__(
        self, interval: float = NOISE_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._clock = clock
        self._interval = interval
        self._summarisers: dict[str, LogSummariser] = {}
        self._last: tuple[logging.LogRecord, bool] | None = None
        self._due: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self._last is not None and self._last[0] is record:
            return self._last[1]
        keep = self._decide(record)
        self._last = (record, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True
        message = record.getMessage()
        if any(pattern.search(message) for pattern in NOT_WARNINGS):
            return False
        for kind, pattern in KNOWN_NOISE:
            if pattern.search(message):
                summariser = self._summarisers.setdefault(kind, LogSummariser(self._interval))
                full, summary = summariser.record(message, self._clock())
                # Summaries go out through flush(), from the daemon's timer.
                if summary is not None:
                    self._due.append(summary.sentence(f"libp2p: {kind}"))
                return full
        return True

    def flush(self) -> list[str]:
        """One sentence per kind of noise with suppressed lines due for a summary."""
        now = self._clock()
        lines, self._due = self._due, []
        for kind, summariser in self._summarisers.items():
            summary = summariser.flush(now)
            if summary is not None:
                lines.append(summary.sentence(f"libp2p: {kind}"))
        return lines


def quiet_libp2p_logging(level: int) -> None:
    """libp2p's records at WARNING and above (everything at DEBUG) reach our handlers."""
    # The modules a host uses, imported now so the levels they set are reset below.
    import libp2p.network.swarm  # noqa: F401, PLC0415 - imported for its logging side effect

    libp2p_log = logging.getLogger("libp2p")
    libp2p_log.propagate = True
    libp2p_log.setLevel(level if level == logging.DEBUG else logging.WARNING)
    # Some modules set their own logger to INFO (the auto-connector logs "initiating
    # 200 new dials" at every start, although we stop it); they inherit ours instead.
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("libp2p.") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)
