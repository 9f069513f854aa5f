from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.launcher import DaemonProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.home import Home


@pytest.fixture
def daemon(home: Home) -> Iterator[DaemonProcess]:
    """A running daemon in a fresh home listening on 127.0.0.1."""
    init_home(home)
    with DaemonProcess(home) as process:
        process.start()
        yield process
