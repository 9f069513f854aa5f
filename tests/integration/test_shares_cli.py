"""share / ls / unshare / pin / unpin / gc through a running daemon."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.launcher import DaemonProcess, run_cli
from p2pshare.proto.ticket import Ticket

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def cli_json(daemon: DaemonProcess, *args: str) -> Any:
    result = run_cli(daemon.home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_share_ls_pin_unpin_gc_unshare(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = tmp_path / "report.pdf"
    data.write_bytes(b"%PDF" + bytes(range(256)) * 4000)
    shared = cli_json(daemon, "share", str(data), "--name", "report")
    assert shared["cid"].startswith("b")
    assert shared["size"] == data.stat().st_size
    ticket = Ticket.parse(shared["ticket"])
    assert str(ticket.cid) == shared["cid"]
    assert ticket.peer_id == daemon.info["peer_id"]
    assert ticket.addrs
    assert cli_json(daemon, "share", str(data), "--name", "report")["cid"] == shared["cid"]

    snapshot = cli_json(daemon, "share", "--copy", str(tmp_path / "report.pdf"), "--name", "v1")
    assert snapshot["stored"]
    assert snapshot["pinned"]
    listed = {s["cid"]: s for s in cli_json(daemon, "ls")["shares"]}
    assert set(listed) == {shared["cid"], snapshot["cid"]}

    assert cli_json(daemon, "gc")["removed"] == []
    assert cli_json(daemon, "unpin", snapshot["cid"])["pinned"] is False
    assert cli_json(daemon, "gc")["removed"] == [snapshot["cid"]]
    assert cli_json(daemon, "pin", shared["cid"])["pinned"] is True
    assert cli_json(daemon, "unshare", shared["cid"])["cid"] == shared["cid"]
    assert cli_json(daemon, "ls")["shares"] == []
    assert data.exists(), "unsharing never deletes the user's file"

    human = run_cli(daemon.home, "share", str(data))
    assert human.returncode == 0
    assert human.stdout.startswith("content ID: b")
    assert "ticket:     p2ps1" in human.stdout


def test_share_errors_are_one_sentence(daemon: DaemonProcess, tmp_path: Path) -> None:
    result = run_cli(daemon.home, "unshare", "bafkr4inotarealcid")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.startswith("error: this is not a p2pshare content ID")
    assert result.stderr.count("\n") == 1
    fifo = tmp_path / "pipe"
    fifo.mkdir()
    (fifo / "A").write_text("1")
    (fifo / "a").write_text("2")
    result = run_cli(daemon.home, "share", str(fifo))
    assert result.returncode == ExitCode.FAILED
    assert result.stderr.startswith(f"error: cannot share {fifo}")
    missing = run_cli(
        daemon.home, "pin", "bafkr4ifuauiebgqioch4a7yhrd5fgfu4soloafiplkblwwzioh7eyb6req"
    )
    assert missing.returncode == ExitCode.FAILED
    assert "no share with content ID" in missing.stderr
