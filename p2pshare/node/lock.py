"""One daemon per home, enforced with an advisory lock the kernel drops on exit.

``flock`` is released when the process dies, even by ``kill -9``, so a stale lock
file or socket left behind never blocks the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING

from p2pshare.errors import DaemonAlreadyRunningError

if TYPE_CHECKING:
    from pathlib import Path


class HomeLock:
    """The exclusive lock of a home's daemon, holding the daemon's pid."""

    def __init__(self, path: Path, stop_command: str = "p2pshare stop") -> None:
        self._path = path
        self._stop_command = stop_command
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DaemonAlreadyRunningError(
                f"a p2pshare daemon (pid {holder}) is already running for "
                f"{self._path.parent}; stop it with: {self._stop_command}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_held(path: Path) -> bool:
    """True while some daemon holds the lock at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return False
