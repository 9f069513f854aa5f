"""A node that knows no peers says how to join, in one sentence, whatever needs the network."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import JOIN_FIRST
from p2pshare.launcher import run_cli
from tests.integration.cluster import cli_json

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration
# A content ID of nothing: no node shares it.
CID = "bafkr4ibxiv7gd5gatj5jlpk3yqt62vn3fqd3lavjhwevm3u6rllpwf5i3y"
WAT = '(module (func (export "_start")))'


def test_every_command_that_needs_peers_says_how_to_join(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    module = tmp_path / "noop.wat"
    module.write_text(WAT)
    out = tmp_path / "out"
    for args in (
        ("get", CID, "-o", str(out)),
        ("seed", CID),
        ("compute", "peers"),
        ("compute", "run", str(module), "-o", str(out)),
    ):
        for as_json in ((), ("--json",)):
            said = run_cli(daemon.home, *args, *as_json, timeout=120)
            assert said.returncode == 1, (args, said.stdout)
            assert said.stderr == f"error: {JOIN_FIRST}\n", args
    found = run_cli(daemon.home, "find", CID)
    assert found.returncode == 1
    assert found.stderr == f"error: {JOIN_FIRST}\n"
    assert not out.exists()
    assert cli_json(daemon.home, "downloads")["downloads"] == []
