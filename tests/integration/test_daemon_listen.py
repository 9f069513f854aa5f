"""A daemon listens on every configured address, or exits with a sentence saying why."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, DaemonStartError, init_home, run_cli

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refused_start(home: Home) -> str:
    """Start a daemon that must fail; return its stderr after checking the exit code."""
    with DaemonProcess(home) as process:
        with pytest.raises(DaemonStartError) as info:
            process.start()
        assert process.wait(10) == ExitCode.CONFIG
    assert "ready" not in str(info.value)
    assert "Traceback" not in str(info.value)
    return str(info.value)


def test_second_daemon_on_the_same_port_exits_and_the_first_keeps_serving(
    short_tmp: Path,
) -> None:
    port = _free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    first, second = Home(short_tmp / "a"), Home(short_tmp / "b")
    for home in (first, second):
        init_home(home, (addr,))
    with DaemonProcess(first) as running:
        info = running.start()
        assert any(a.startswith(addr + "/p2p/") for a in info["addrs"])
        stderr = _refused_start(second)
        assert (
            f"error: cannot listen on {addr} (from [network] listen in {second.config_path}): "
            "the port is in use by another program or another p2pshare daemon"
        ) in stderr
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        assert run_cli(first, "id").returncode == 0


def test_one_unusable_address_in_the_list_stops_the_start(home: Home) -> None:
    init_home(home, ("/ip4/127.0.0.1/tcp/0", "/ip4/192.0.2.1/tcp/0"))
    stderr = _refused_start(home)
    assert "cannot listen on /ip4/192.0.2.1/tcp/0 (from [network] listen in" in stderr
    assert "the IP address is not one of this machine's" in stderr


def test_port_held_by_another_program_stops_the_start(home: Home) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        addr = f"/ip4/127.0.0.1/tcp/{other.getsockname()[1]}"
        init_home(home, (addr,))
        assert f"cannot listen on {addr}" in _refused_start(home)


def test_empty_listen_list_is_a_config_error_not_a_traceback(home: Home) -> None:
    init_home(home)
    home.config_path.write_text("[network]\nlisten = []\n")
    stderr = _refused_start(home)
    assert f"{home.config_path}, line 2, [network] listen: must list at least one address" in (
        stderr
    )


def test_fixed_data_port_in_use_stops_the_start(short_tmp: Path) -> None:
    data_port = _free_port()
    first, second = Home(short_tmp / "a"), Home(short_tmp / "b")
    for home in (first, second):
        init_home(home)
        text = home.config_path.read_text()
        assert "\ndata_port = 0\n" in text
        home.config_path.write_text(
            text.replace("\ndata_port = 0\n", f"\ndata_port = {data_port}\n")
        )
    with DaemonProcess(first) as running:
        running.start()
        stderr = _refused_start(second)
        assert (
            f"cannot listen on 127.0.0.1 port {data_port} "
            f"(from [transfer] data_port in {second.config_path}): the port is in use"
        ) in stderr
        assert run_cli(first, "id").returncode == 0
