"""A get of content the node itself holds is copied from its own store (field test #29).

Real daemons on 127.0.0.1.  The copy goes through the same downloader as a network
get (p2pshare.transfer.local), so every chunk is verified: a local copy changed on
disk is never what the user gets; the peers are asked instead.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, start_all
from tests.integration.cluster import cli_json

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration
MIB = 1 << 20


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_get_of_content_this_node_shares_is_copied_from_its_own_store(
    short_tmp: Path, tmp_path: Path
) -> None:
    """A lone node with no peer at all: over the network this was "no providers"."""
    home = Home(short_tmp / "alone")
    init_home(home)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "big.bin").write_bytes(os.urandom(3 * MIB + 7))
    (source / "small.txt").write_text("hello\n")
    with DaemonProcess(home) as node:
        node.start()
        me = node.info["peer_id"]
        shared = cli_json(home, "share", str(source))
        out = tmp_path / "copy"
        report = cli_json(home, "get", shared["cid"], "-o", str(out))
        assert report["peers"] == [me]
        assert report["paths"] == {me: "local"}
        assert digest(out / "sub" / "big.bin") == digest(source / "sub" / "big.bin")
        assert (out / "small.txt").read_text() == "hello\n"
        said = run_cli(home, "get", shared["cid"], "-o", str(tmp_path / "again"))
        assert said.returncode == 0
        assert said.stdout.rstrip().endswith("from this node's own store")
        # The same rules as any get: an existing destination is not replaced.
        taken = tmp_path / "taken"
        taken.write_bytes(b"precious")
        refused = run_cli(home, "get", shared["cid"], "-o", str(taken))
        assert refused.returncode == ExitCode.FAILED
        assert refused.stderr == f"error: {taken} already exists; use --force to replace it\n"
        assert taken.read_bytes() == b"precious"


def test_a_local_copy_changed_on_disk_is_never_served_and_peers_send_the_content(
    short_tmp: Path, tmp_path: Path
) -> None:
    """The getter's own copy is altered in place, size and mtime kept, so only the
    chunk hashes can tell: its next get must come from the seeder, intact."""
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    init_home(seeder_home)
    with ExitStack() as stack:
        seeder = stack.enter_context(DaemonProcess(seeder_home))
        seeder.start()
        init_home(getter_home, bootstrap=(seeder.info["addrs"][0],))
        getter = stack.enter_context(DaemonProcess(getter_home))
        start_all([getter])
        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(2 * MIB + 3))
        shared = cli_json(seeder_home, "share", str(data))
        first = tmp_path / "first.bin"
        cli_json(getter_home, "get", shared["ticket"], "-o", str(first))
        stamp = first.stat()
        with first.open("r+b") as f:
            f.seek(MIB + 1)
            f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
        os.utime(first, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

        second = tmp_path / "second.bin"
        report = cli_json(getter_home, "get", shared["ticket"], "-o", str(second))
        assert digest(second) == digest(data)
        assert seeder.info["peer_id"] in report["peers"]
