"""A compute daemon for the security tests (the plain ``daemon`` is in tests/conftest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.launcher import DaemonProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.home import Home


@pytest.fixture
def compute_daemon(home: Home) -> Iterator[DaemonProcess]:
    """A running daemon that offers compute, so its worker processes run."""
    init_home(home, compute={"enabled": True, "slots": 2})
    with DaemonProcess(home) as process:
        process.start()
        yield process
