"""A real ``p2pshare daemon`` process in a temporary home, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import ExitCode
from p2pshare.identity import NodeKey
from p2pshare.launcher import DaemonProcess, DaemonStartError, init_home, run_cli
from p2pshare.node.lock import is_held

if TYPE_CHECKING:
    from p2pshare.home import Home

pytestmark = pytest.mark.integration


def test_id_and_status_as_json(daemon: DaemonProcess) -> None:
    key = NodeKey.load(daemon.home.key_path)
    result = run_cli(daemon.home, "id", "--json")
    assert result.returncode == 0, result.stderr
    ident = json.loads(result.stdout)
    assert ident["peer_id"] == key.peer_id
    assert ident["addrs"]
    for addr in ident["addrs"]:
        assert addr.startswith("/ip4/127.0.0.1/tcp/")
        assert addr.endswith(f"/p2p/{key.peer_id}")
    status = json.loads(run_cli(daemon.home, "status", "--json").stdout)
    assert status["peer_id"] == key.peer_id
    assert status["peers"] == 0
    assert status["uptime_s"] >= 0
    assert status["version"]
    # Alone, nobody can dial it back; no relays configured, none offered.
    assert status["reachability"] == "unknown"
    assert status["confirmed_addrs"] == []
    assert (status["relay_service"], status["uses_relay"], status["relayed_at"]) == (
        False,
        False,
        [],
    )
    # Off by default: the router is never asked (tests/net/test_portmap.py).
    assert status["port_mapping"]["state"] == "off"


def test_listen_address_accepts_tcp_connections(daemon: DaemonProcess) -> None:
    addr = daemon.info["addrs"][0].split("/")
    with socket.create_connection((addr[2], int(addr[4])), timeout=5):
        pass


def test_control_socket_is_private(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.home.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.home.root.stat().st_mode) == 0o700


def test_second_daemon_is_refused(daemon: DaemonProcess) -> None:
    with (
        DaemonProcess(daemon.home) as second,
        pytest.raises(DaemonStartError, match="already running") as info,
    ):
        second.start()
    assert f"stop it with: p2pshare --home {daemon.home.root} stop" in str(info.value)
    assert run_cli(daemon.home, "id").returncode == 0


def test_stop_removes_socket_and_releases_the_home(daemon: DaemonProcess) -> None:
    result = run_cli(daemon.home, "stop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "daemon stopped"
    assert daemon.wait(10) == 0
    assert not daemon.home.socket_path.exists()
    assert not is_held(daemon.home.lock_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(daemon: DaemonProcess, signum: int) -> None:
    os.kill(daemon.pid, signum)
    assert daemon.wait(10) == 0
    assert not daemon.home.socket_path.exists()


def test_restart_after_kill_9(daemon: DaemonProcess) -> None:
    peer_id = daemon.info["peer_id"]
    daemon.kill()
    assert daemon.home.socket_path.exists(), "kill -9 leaves the socket behind"
    result = run_cli(daemon.home, "id")
    assert result.returncode == ExitCode.DAEMON_NOT_RUNNING
    with DaemonProcess(daemon.home) as again:
        assert again.start()["peer_id"] == peer_id
        assert json.loads(run_cli(daemon.home, "id", "--json").stdout)["peer_id"] == peer_id


def test_garbage_on_the_control_socket(daemon: DaemonProcess) -> None:
    with socket.socket(socket.AF_UNIX) as vandal:
        vandal.settimeout(10)
        vandal.connect(str(daemon.home.socket_path))
        vandal.sendall(b"\x00\x00\x00\x05hello")
        reply = vandal.recv(4096)
        assert b"bad_request" in reply
        vandal.sendall(b"\xff\xff\xff\xff")
        while vandal.recv(4096):
            pass
    assert run_cli(daemon.home, "status").returncode == 0


def test_not_running_gives_one_sentence_and_exit_code(home: Home) -> None:
    init_home(home)
    for verb in ("id", "status", "stop"):
        result = run_cli(home, verb, "--json")
        assert result.returncode == ExitCode.DAEMON_NOT_RUNNING
        assert result.stdout == ""
        # The hint keeps --home: a bare `p2pshare daemon` would start the default home.
        assert result.stderr == (
            f"error: the p2pshare daemon is not running for {home.root}; "
            f"start it with: p2pshare --home {home.root} daemon\n"
        )


def _status_with(*, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``p2pshare status`` with only ``env`` (no --home): how the CLI finds the home."""
    return subprocess.run(
        [sys.executable, "-m", "p2pshare_cli", "status"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_not_running_hint_names_the_home_from_the_environment(home: Home) -> None:
    init_home(home)
    result = _status_with(env={"P2PSHARE_HOME": str(home.root), "PATH": "/usr/bin:/bin"})
    assert result.returncode == ExitCode.DAEMON_NOT_RUNNING
    assert f"start it with: p2pshare --home {home.root} daemon\n" in result.stderr


def test_not_running_hint_for_the_default_home_is_the_plain_command(tmp_path: Path) -> None:
    # The platform's default home is used without --home or $P2PSHARE_HOME.
    env = {"XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    (tmp_path / "p2pshare").mkdir(mode=0o700)
    result = _status_with(env=env)
    assert result.returncode == ExitCode.DAEMON_NOT_RUNNING, result.stderr
    assert result.stderr.endswith("; start it with: p2pshare daemon\n")


def test_daemon_initialises_a_fresh_home(home: Home) -> None:
    home.create()
    home.config_path.write_text('[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n')
    home.config_path.chmod(0o600)
    with DaemonProcess(home) as process:
        info = process.start()
        assert info["peer_id"] == NodeKey.load(home.key_path).peer_id


def test_bad_config_stops_the_start_with_one_sentence(home: Home) -> None:
    init_home(home)
    home.config_path.write_text("[network]\nlisten = 4001\n")
    with DaemonProcess(home) as process, pytest.raises(DaemonStartError) as info:
        process.start()
    assert f"{home.config_path}, line 2, [network] listen: must be a list of strings" in str(
        info.value
    )
    assert "Traceback" not in str(info.value)


def test_demo_runs_and_cleans_up(home: Home) -> None:
    result = run_cli(home, "demo", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    assert report["private_share"] is True
    # node2 knew only node0; whether its join lookup met node1 first or not, the find
    # (which the demo checks names node1) went through the DHT.
    assert isinstance(report["fetcher_connected_to_sharer_before_find"], bool)
    assert 0 < report["find_s"] < 10
    assert report["cid"].startswith("bafkr4")
    assert not Path(report["workdir"]).exists()
