"""Everything a daemon creates in its home is private (0600/0700) from its first start."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from p2pshare.launcher import DaemonProcess, init_home, run_cli

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.home import Home

pytestmark = pytest.mark.integration


def _open_to_others(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append(f"{mode:o} {path.relative_to(root)}")
    return found


def test_first_start_creates_every_home_file_private(home: Home, tmp_path: Path) -> None:
    init_home(home, compute={"enabled": True})
    data = tmp_path / "data.txt"
    data.write_text("hello")
    # Started under the common umask 022: the daemon must not rely on the user's.
    old = os.umask(0o022)
    try:
        process = DaemonProcess(home)
        process.spawn()
    finally:
        os.umask(old)
    with process:
        process.wait_ready()
        assert run_cli(home, "share", "--copy", str(data)).returncode == 0
        assert home.catalog_path.with_name("catalog.sqlite-wal").exists()
        assert home.compute_dir.is_dir()
        assert _open_to_others(home.root) == []
    assert _open_to_others(home.root) == []
