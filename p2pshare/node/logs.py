"""Daemon logging: stderr and daemon.log in the home, private, rotated and quiet.

daemon.log is capped at LOG_MAX_BYTES and rotated through LOG_BACKUPS older files
(daemon.log.1 ...), every one created 0600.  libp2p's known noise about gone peers
is summarised (p2pshare.net.libp2p_log); the daemon calls :func:`flush_summaries`
in its nursery so those summaries are written.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING

import trio

from p2pshare.net.libp2p_log import Libp2pNoiseFilter, quiet_libp2p_logging

if TYPE_CHECKING:
    import io
    from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
# How often pending summaries are looked at; each kind is summarised at most once
# per its own interval.
FLUSH_EVERY = 60.0

log = logging.getLogger(__name__)
_noise: Libp2pNoiseFilter | None = None


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files (the current one after each rotation too) are 0600."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: PTH123


def configure(level: str, log_file: Path) -> None:
    """Send p2pshare's records at ``level`` and libp2p's warnings to stderr and ``log_file``."""
    global _noise  # noqa: PLW0603 - logging is process-wide by nature
    numeric = getattr(logging, level.upper())
    formatter = logging.Formatter(_FORMAT)
    _noise = Libp2pNoiseFilter()
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        PrivateRotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        ),
    ]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        if numeric != logging.DEBUG:
            handler.addFilter(_noise)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("p2pshare").setLevel(numeric)
    quiet_libp2p_logging(numeric)


async def flush_summaries() -> None:
    """Write the summaries of suppressed libp2p noise as they fall due; runs until cancelled."""
    while True:
        await trio.sleep(FLUSH_EVERY)
        for line in _noise.flush() if _noise is not None else ():
            log.warning("%s", line)
