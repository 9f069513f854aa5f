"""A node never publishes or serves its own secrets, through real daemons on 127.0.0.1.

Field test 2, #2: `share HOME/node.key` gave a CID, and any peer holding it could
download the key.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.identity import NodeKey
from p2pshare.launcher import DaemonProcess, init_home, run_cli
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.ticket import Ticket
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def refused(daemon: DaemonProcess, path: Path) -> str:
    result = run_cli(daemon.home, "share", str(path))
    assert result.returncode == ExitCode.FAILED, result.stdout
    assert result.stderr.startswith(f"error: cannot share {path}: ")
    assert result.stderr.count("\n") == 1
    return result.stderr


def test_share_refuses_the_key_the_home_and_a_parent_of_the_home(
    daemon: DaemonProcess,
) -> None:
    root = daemon.home.root
    assert "private key" in refused(daemon, daemon.home.key_path)
    assert f"share files from outside {root} instead" in refused(daemon, root)
    assert f"inside the node home {root}" in refused(daemon, daemon.home.catalog_path)
    assert f"contains the node home {root}" in refused(daemon, root.parent)
    listed = run_cli(daemon.home, "ls", "--json")
    assert json.loads(listed.stdout)["shares"] == []


def test_a_hand_edited_catalog_row_pointing_at_the_key_is_not_served(
    short_tmp: Path, tmp_path: Path
) -> None:
    victim, thief = Home(short_tmp / "victim"), Home(short_tmp / "thief")
    init_home(victim)
    init_home(thief)
    # The share an older p2pshare made of the key (or a catalog row added by hand).
    catalog = Catalog(victim.catalog_path)
    store = ShareStore(catalog, victim.content_dir, NodeKey.load(victim.key_path), MIN_CHUNK_SIZE)
    cid = store.commit(store.prepare(victim.key_path)).cid
    catalog.close()
    with DaemonProcess(victim) as seeder, DaemonProcess(thief) as getter:
        seeder.start()
        getter.start()
        ticket = Ticket.parse(_json(seeder.home, "ls")["shares"][0]["ticket"])
        assert str(ticket.cid) == cid
        stolen = tmp_path / "stolen.key"
        result = run_cli(getter.home, "get", str(ticket), "-o", str(stolen), "--no-progress")
        assert result.returncode == ExitCode.FAILED
        assert not stolen.exists()
        [row] = _json(seeder.home, "ls")["shares"]
        assert "never served" in row["stale"]


def _json(home: Home, *args: str) -> Any:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
