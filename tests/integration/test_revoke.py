"""`unshare --revoke` between real daemons: revoked content is never announced, also
when a `get` holds it here again, until the user shares it again (issue: field test 4)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from p2pshare.launcher import run_cli, wait_announced
from tests.integration.cluster import bootstrapped, cli_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    yield from bootstrapped(short_tmp, 2)


def _share_status(node: DaemonProcess, cid: str) -> dict[str, object]:
    shares = cli_json(node.home, "status")["shares"]
    return next(s for s in shares if s["cid"] == cid)


def test_revoked_content_fetched_back_stays_unannounced_until_shared_again(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    holder, sharer = nodes
    source = tmp_path / "report.txt"
    source.write_text("quarterly numbers\n")
    shared = cli_json(sharer.home, "share", str(source))
    cid = shared["cid"]
    assert shared["unrevoked"] is False
    cli_json(holder.home, "get", shared["ticket"], "-o", str(tmp_path / "held.txt"))
    assert cli_json(sharer.home, "unshare", cid, "--revoke")["revoked"]

    # A get of revoked content pins it here again; it must stay unannounced.
    since = int(time.time()) + 1
    time.sleep(max(0.0, since - time.time()))
    cli_json(sharer.home, "get", cid, "-o", str(tmp_path / "back.txt"))
    other = tmp_path / "other.txt"
    other.write_text("announced after the get\n")
    later = cli_json(sharer.home, "share", str(other))["cid"]
    wait_announced(sharer.home, later, since=since)
    status = _share_status(sharer, cid)
    assert status["withheld"] == "revoked with unshare --revoke"
    assert status["provided_at"] is None or int(str(status["provided_at"])) < since
    said = run_cli(sharer.home, "status")
    assert f"{cid}  never announced: revoked with unshare --revoke" in said.stdout

    # Sharing it again takes the revocation back, says so, and announces it.
    again = run_cli(sharer.home, "share", str(source))
    assert again.returncode == 0, again.stderr
    assert "unrevoked:  it was revoked with unshare --revoke; this node serves it again" in (
        again.stdout
    )
    wait_announced(sharer.home, cid, since=since)
    assert _share_status(sharer, cid)["withheld"] is None
    assert cli_json(sharer.home, "share", str(source))["unrevoked"] is False
