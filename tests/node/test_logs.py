"""daemon.log is capped and rotated, and every one of its files is 0600."""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

from p2pshare.node.logs import PrivateRotatingFileHandler

if TYPE_CHECKING:
    from pathlib import Path


def test_log_rotates_at_its_cap_into_private_files(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    old = os.umask(0o022)
    try:
        handler = PrivateRotatingFileHandler(path, maxBytes=1000, backupCount=3, encoding="utf-8")
        for i in range(200):
            handler.emit(
                logging.LogRecord("p2pshare", logging.INFO, "", 1, f"line {i:04d} " * 4, None, None)
            )
        handler.close()
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2", "daemon.log.3"]
    for name in files:
        info = (tmp_path / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, name
        assert info.st_size <= 1000
    assert "line 0199" in path.read_text()
