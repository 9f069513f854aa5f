"""A real daemon's log: quiet at start and at stop, and not floodable through the data port."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, start_all
from tests.integration.cluster import cli_json

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


def test_a_node_stopped_with_peers_connected_logs_no_traceback(short_tmp: Path) -> None:
    """Field test: `stop` with peers connected printed the routing-table feeder's
    tracebacks, one per connection closing after the DHT had stopped."""
    homes = [Home(short_tmp / name) for name in ("stopper", "p1", "p2")]
    for home in homes:
        init_home(home)
    stopper, *peers = daemons = [DaemonProcess(home) for home in homes]
    try:
        start_all(daemons)
        for peer in peers:
            cli_json(peer.home, "connect", stopper.info["addrs"][0])
        assert cli_json(stopper.home, "status")["peers"] == len(peers)
        assert stopper.stop() == 0
    finally:
        for daemon in daemons:
            daemon.__exit__(None, None, None)
    for text in (stopper.home.log_path.read_text(), Path(stopper.stderr_path).read_text()):
        assert "Traceback" not in text
        assert " ERROR " not in text, text
