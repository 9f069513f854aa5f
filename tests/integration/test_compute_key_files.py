"""`compute run` sends the files it is given to workers: one that looks like a private
key needs --yes, as for `share` (field test: job inputs skipped share's check)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from p2pshare.compute.examples import WAT_DIR
from p2pshare.errors import JOIN_FIRST
from p2pshare.launcher import run_cli

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("option", ["--input", "--stdin"])
def test_a_key_file_is_sent_to_workers_only_with_yes(
    daemon: DaemonProcess, tmp_path: Path, option: str
) -> None:
    key = tmp_path / ".ssh" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    module, out = str(WAT_DIR / "wordcount.wat"), str(tmp_path / "out")
    refused = run_cli(daemon.home, "compute", "run", module, option, str(key), "-o", out)
    assert (refused.returncode, refused.stderr) == (
        1,
        f"error: cannot run the job: {key} looks like a private key (it is inside a .ssh "
        "directory), and a job's files are sent to its workers; if you mean to send it, "
        "run the job again with --yes\n",
    )
    # Nothing was shared for the job, not even for a moment.
    listed = run_cli(daemon.home, "ls", "--json")
    assert json.loads(listed.stdout)["shares"] == []
    # With --yes the key is no obstacle: the job goes on to look for workers.
    confirmed = run_cli(daemon.home, "compute", "run", module, option, str(key), "-o", out, "--yes")
    assert (confirmed.returncode, confirmed.stderr) == (1, f"error: {JOIN_FIRST}\n")


def test_a_file_of_the_node_home_is_never_sent_to_workers_not_even_with_yes(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    catalog = daemon.home.root / "catalog.sqlite"
    module, out = str(WAT_DIR / "wordcount.wat"), str(tmp_path / "out")
    for extra in ((), ("--yes",)):
        refused = run_cli(
            daemon.home, "compute", "run", module, "--input", f"db={catalog}", "-o", out, *extra
        )
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: cannot share {catalog}: it is inside the node home "
            f"{daemon.home.root.resolve()}, which holds the node's private key and catalog; "
            "share files from outside the home instead\n"
        )
    listed = run_cli(daemon.home, "ls", "--json")
    assert json.loads(listed.stdout)["shares"] == []
