"""The modes of the files and directories p2pshare hands to a user (docs/transfer.md).

A finished download or job output gets what any program of the user would create:
``0666 & ~umask`` for a file, ``0777 & ~umask`` for a directory and for a file the
publisher shared as executable.  The umask is the one of the command that asked
(``get``, ``compute run``), which may differ from the daemon's (systemd starts
daemons with its own).  Nothing else of a publisher's mode is ever applied, so no
peer can plant a setuid, setgid, sticky or world-writable file.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_UMASK = 0o777
# What a download that is not handed to a user gets (a job's input): owner only.
PRIVATE_UMASK = 0o077
_STATUS = Path("/proc/self/status")


def read_umask() -> int:
    """This process's umask, without changing it where the OS allows.

    Linux shows it in /proc/self/status; elsewhere it can only be read by setting
    another one for a moment, and the one set is PRIVATE_UMASK, so a file another
    thread creates in that moment comes out more private, never less.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    except (OSError, ValueError):
        pass
    old = os.umask(PRIVATE_UMASK)
    os.umask(old)
    return old


def file_mode(umask: int, *, executable: bool = False) -> int:
    return (0o777 if executable else 0o666) & ~umask


def dir_mode(umask: int) -> int:
    return 0o777 & ~umask
