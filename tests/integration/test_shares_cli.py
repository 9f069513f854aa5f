"""share / ls / unshare / pin / unpin / gc through a running daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli
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


def test_ls_gives_ticket_skipped_and_the_path_shared_for_a_copy(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    (tree / "link").symlink_to(tree / "a.txt")
    shared = cli_json(daemon, "share", str(tree))
    copied = cli_json(daemon, "share", "--copy", str(tree / "a.txt"))
    listed = {s["cid"]: s for s in cli_json(daemon, "ls")["shares"]}
    copied.pop("gc_removed")
    for doc in (shared, copied):
        assert doc.pop("announced_to") == 0  # a daemon alone: no peer to hold the record
        assert doc.pop("unrevoked") is False
        assert listed[doc["cid"]] == doc
    assert listed[shared["cid"]]["skipped"] == [{"path": "link", "reason": "symlink"}]
    assert Ticket.parse(listed[shared["cid"]]["ticket"]).addrs
    assert listed[copied["cid"]]["path"] == str(tree / "a.txt")
    human = run_cli(daemon.home, "ls").stdout
    assert f"1 file  {tree / 'a.txt'} (stored copy)" in human
    assert "/content/" not in human


def test_a_share_overwritten_on_disk_is_stale_in_ls_and_status(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data = tmp_path / "big.bin"
    data.write_bytes(bytes(100_000))
    cid = cli_json(daemon, "share", str(data))["cid"]
    data.write_bytes(b"small")
    [listed] = cli_json(daemon, "ls")["shares"]
    assert "changed on disk" in listed["stale"]
    [status] = cli_json(daemon, "status")["shares"]
    assert status["cid"] == cid
    assert status["stale"] == listed["stale"]
    assert f"{cid}  stale, not announced" in run_cli(daemon.home, "status").stdout


def test_status_shows_the_compute_offer(daemon: DaemonProcess) -> None:
    human = run_cli(daemon.home, "status").stdout
    assert "compute:" in human
    home = daemon.home.root
    assert f"off (turn it on with: p2pshare --home {home} compute offer --on)" in human


def test_names_that_are_not_utf8_are_skipped_not_an_internal_error(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Field test 2 #11: `share src/weird` with a file named bad\\xff crashed the reply."""
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "fine.txt").write_text("ok")
    bad = os.fsencode(weird) + b"/bad\xff"
    with open(bad, "wb") as f:  # noqa: PTH123 - a bytes path on purpose
        f.write(b"x")
    shared = cli_json(daemon, "share", str(weird))
    assert shared["skipped"] == [{"path": "bad\\xff", "reason": "its name is not valid UTF-8"}]
    assert shared["files"] == 1
    human = run_cli(daemon.home, "share", str(weird))
    assert "skipped bad\\xff: its name is not valid UTF-8" in human.stdout
    direct = run_cli(daemon.home, "share", os.fsdecode(bad))
    assert direct.returncode == ExitCode.FAILED
    cid = shared["cid"]
    to_bad = run_cli(daemon.home, "get", cid, "-o", os.fsdecode(bad) + "-copy")
    assert to_bad.returncode == ExitCode.FAILED
    assert to_bad.stderr == (
        f"error: {weird}/bad\\xff-copy is not valid UTF-8, which p2pshare cannot pass to its "
        "daemon; rename it first\n"
    )
    assert (
        direct.stderr
        == f"error: cannot share {weird}/bad\\xff: its name is not valid UTF-8; rename it first\n"
    )


def test_an_empty_share_name_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = tmp_path / "a.txt"
    data.write_text("a")
    result = run_cli(daemon.home, "share", str(data), "--name", "")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.startswith("error: a share's name cannot be empty; ")
    assert result.stderr.count("\n") == 1
    assert cli_json(daemon, "ls")["shares"] == []


def test_a_finished_download_is_listed_fresh_until_overwritten(
    short_tmp: Path, tmp_path: Path
) -> None:
    """Field test 2 #17: `get --force` over a download left it listed as a fresh share."""
    seeder_home, getter_home = Home(short_tmp / "seeder"), Home(short_tmp / "getter")
    init_home(seeder_home)
    init_home(getter_home)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(300_000))
    small.write_bytes(b"small")
    with DaemonProcess(seeder_home) as seeder, DaemonProcess(getter_home) as getter:
        seeder.start()
        getter.start()
        big_ticket = cli_json(seeder, "share", str(big))["ticket"]
        small_ticket = cli_json(seeder, "share", str(small))["ticket"]
        out = tmp_path / "out.bin"
        big_cid = cli_json(getter, "get", big_ticket, "-o", str(out))["cid"]
        [listed] = cli_json(getter, "ls")["shares"]
        assert (listed["cid"], listed["stale"]) == (big_cid, None)
        small_cid = cli_json(getter, "get", small_ticket, "-o", str(out), "--force")["cid"]
        stale = {s["cid"]: s["stale"] for s in cli_json(getter, "ls")["shares"]}
        assert "changed on disk" in stale[big_cid]
        assert stale[small_cid] is None, "the new download is fresh"


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def _staging(home: Home, pid: int, serial: int, size: int) -> Path:
    """What a share --copy that never finished left in the store."""
    path = home.content_dir / f".staging-{pid}-{serial}"
    (path / "tree").mkdir(parents=True)
    (path / "tree" / "half-copied.bin").write_bytes(b"x" * size)
    return path


def test_what_unfinished_shares_left_is_removed_at_start_and_by_gc(
    home: Home, tmp_path: Path
) -> None:
    init_home(home)
    home.content_dir.mkdir(mode=0o700)
    crashed = _staging(home, _dead_pid(), 1, 1000)
    # The pid of a daemon killed long ago, now some other process's (pid 1 always lives).
    reused = _staging(home, 1, 2, 10)
    stored = home.content_dir / ("ab" * 32)
    stored.mkdir()
    with DaemonProcess(home) as node:
        node.start()
        assert not crashed.exists()
        assert not reused.exists()
        later = _staging(home, _dead_pid(), 3, 500)
        report = cli_json(node, "gc")
        assert report["freed_bytes"] == 500
        assert not later.exists()
        assert [p.name for p in home.content_dir.iterdir()] == [stored.name]


def test_a_file_that_looks_like_a_private_key_is_shared_only_with_yes(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "notes.txt").write_text("nothing secret\n")
    key = backup / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    refused = run_cli(daemon.home, "share", str(backup))
    assert refused.returncode == ExitCode.FAILED
    assert refused.stderr == (
        f"error: cannot share {backup}: {key} looks like a private key (it is named like an "
        "SSH private key); if you mean to publish it, share it again with --yes\n"
    )
    assert cli_json(daemon, "ls")["shares"] == []
    shared = cli_json(daemon, "share", str(backup), "--yes")
    assert shared["files"] == 2
