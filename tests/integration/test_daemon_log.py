"""A real daemon's log: quiet at start, and not floodable through the data port."""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration


def _data_port(log: str) -> int:
    ports = re.findall(r"data channels on 127\.0\.0\.1 port (\d+)", log)
    assert len(ports) == 1, log
    return int(ports[0])


def test_start_logs_no_dial_storm_and_the_data_port_once(daemon: DaemonProcess) -> None:
    log = daemon.home.log_path.read_text()
    _data_port(log)
    assert "new dials" not in log
    assert "auto_connector" not in log


def test_connection_flood_on_the_data_port_adds_one_log_line(daemon: DaemonProcess) -> None:
    log_path = daemon.home.log_path
    port = _data_port(log_path.read_text())
    before = len(log_path.read_text().splitlines())
    for _ in range(500):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x" * 10)
    deadline = time.monotonic() + 10
    while "refused a data connection" not in log_path.read_text():
        assert time.monotonic() < deadline, "the first refusal was not logged"
        time.sleep(0.05)
    # Give the daemon time to refuse the rest before counting.
    time.sleep(1)
    added = log_path.read_text().splitlines()[before:]
    assert len(added) == 1, added
    assert "refused a data connection: " in added[0]
