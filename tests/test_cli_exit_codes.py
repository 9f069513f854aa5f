"""Exit codes of the CLI match the table in docs/cli.md, verb by verb."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import ConfigError, ExitCode
from p2pshare.launcher import init_home, run_cli

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.home import Home

TICKET_LIKE = "p2ps1garbage"
PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"

# (argv after --home, expected exit code, text the one-line error must contain)
USAGE_ERRORS = [
    (["connect", "garbage"], "is not a peer address"),
    (["connect", "/ip4/192.0.2.1/tcp/4001"], "does not end in /p2p/<peer ID>"),
    (["connect", "/ip4/192.0.2.1/tcp/4001/p2p/nope"], "is not a peer ID"),
    (["connect", f"/ip4/192.0.2.1/udp/4001/quic-v1/p2p/{PEER_ID}"], "p2pshare dials TCP only"),
    (["get", "garbage", "-o", "out"], "neither a p2pshare content ID"),
    (["get", "bafkgarbage", "-o", "out"], "not a p2pshare content ID"),
    (["get", "Qmfoo", "-o", "out"], "not a p2pshare content ID"),
    (["find", "garbage"], "not a p2pshare content ID"),
    (["unshare", "garbage"], "not a p2pshare content ID"),
    (["pin", "bafkgarbage"], "not a p2pshare content ID"),
    (["unpin", "garbage"], "not a p2pshare content ID"),
    (["downloads", "cancel", "garbage"], "not a p2pshare content ID"),
    (["init", "--listen", "/ip4/127.0.0.1/udp/4001/quic-v1"], "p2pshare listens on TCP only"),
    (["find", "bafkgarbage", "--timeout", "nan"], "is not a finite number"),
    (["find", "bafkgarbage", "--timeout", "inf"], "Invalid value for '--timeout'"),
    (["no-such-verb"], "No such command"),
    (["find"], "Missing argument"),
]


def _run(home: Home, *argv: str) -> tuple[int, str]:
    result = run_cli(home, *argv)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    if not result.stderr.startswith("Usage:"):  # click's own usage errors add a usage line
        assert result.stderr.startswith("error: ")
        assert result.stderr.count("\n") == 1
    return result.returncode, result.stderr


@pytest.mark.parametrize(("argv", "says"), USAGE_ERRORS)
def test_bad_argument_exits_with_usage_code_without_a_daemon(
    home: Home, argv: list[str], says: str
) -> None:
    init_home(home)
    code, output = _run(home, *argv)
    assert code == ExitCode.USAGE, output
    assert says in output


def test_bad_ticket_exits_with_usage_code(home: Home) -> None:
    from p2pshare.proto.ticket import TICKET_PREFIX

    init_home(home)
    code, output = _run(home, "get", TICKET_PREFIX + "garbage", "-o", "out")
    assert code == ExitCode.USAGE, output


@pytest.mark.parametrize("verb", [["id"], ["status"], ["ls"], ["peers"], ["stop"]])
def test_query_on_a_home_that_does_not_exist_is_a_home_error(home: Home, verb: list[str]) -> None:
    code, output = _run(home, *verb)
    assert code == ExitCode.CONFIG, output
    assert f"there is no p2pshare home at {home.root}" in output
    assert not home.root.exists()


@pytest.mark.parametrize("verb", [["id"], ["status"], ["ls"]])
def test_query_without_a_daemon_exits_3(home: Home, verb: list[str]) -> None:
    init_home(home)
    code, output = _run(home, *verb)
    assert code == ExitCode.DAEMON_NOT_RUNNING, output


def test_daemon_refuses_a_home_open_to_others_with_the_home_code(home: Home) -> None:
    # A subprocess: the daemon command sets the process umask.
    init_home(home)
    home.root.chmod(0o755)
    result = run_cli(home, "daemon")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert f"fix it with: chmod 700 {home.root}" in result.stderr


def test_daemon_refuses_a_config_open_to_others_with_the_home_code(home: Home) -> None:
    init_home(home)
    home.config_path.chmod(0o666)
    result = run_cli(home, "daemon")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr == (
        f"error: the config {home.config_path} can be read or changed by other users "
        f"(mode 666); fix it with: chmod 600 {home.config_path}\n"
    )


def test_daemon_refuses_a_key_open_to_others_with_the_home_code(home: Home) -> None:
    init_home(home)
    home.key_path.chmod(0o640)
    result = run_cli(home, "daemon")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert f"fix it with: chmod 600 {home.key_path}" in result.stderr


def test_home_of_another_user_is_a_home_error(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    init_home(home)
    monkeypatch.setattr(os, "getuid", lambda: home.root.stat().st_uid + 1)
    with pytest.raises(ConfigError, match="belongs to another user") as info:
        home.check_private()
    assert info.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--stdin", "bafkgarbage"),
        ("--stdin", "no-such-file-nor-cid"),
        ("--input", "data=bafkgarbage"),
        ("--input", "data=p2ps1garbage"),
    ],
)
def test_compute_run_with_a_malformed_cid_exits_with_usage_code_without_a_daemon(
    home: Home, tmp_path: Path, option: str, value: str
) -> None:
    init_home(home)
    module = tmp_path / "m.wat"
    module.write_text("(module)")
    code, output = _run(home, "compute", "run", str(module), option, value, "-o", "out")
    assert code == ExitCode.USAGE, output
    assert "is no file here" in output
