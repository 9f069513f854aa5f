"""Daemon logging: stderr and daemon.log in the home (mode 0600)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str, log_file: Path) -> None:
    """Send p2pshare's records at ``level`` and libp2p's warnings to stderr and ``log_file``."""
    numeric = getattr(logging, level.upper())
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    formatter = logging.Formatter(_FORMAT)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.FileHandler(log_file, encoding="utf-8"),
    ]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("p2pshare").setLevel(numeric)
    # libp2p logs every dial and stream at INFO; keep it quiet unless debugging.
    # Importing libp2p turns propagation off unless LIBP2P_DEBUG is set; turn it on so
    # its warnings (and, at debug level, everything) reach our handlers.
    import libp2p  # noqa: F401, PLC0415 - imported for its logging side effect first

    libp2p_log = logging.getLogger("libp2p")
    libp2p_log.propagate = True
    libp2p_log.setLevel(numeric if numeric == logging.DEBUG else logging.WARNING)
