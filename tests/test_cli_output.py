"""What the CLI prints for people: counts, rates, share lines and the status lines."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from p2pshare.home import Home

# cli/ installs as p2pshare_cli (pyproject.toml), a name mypy cannot map back to cli/.
_main = importlib.import_module("p2pshare_cli.main")
_output = importlib.import_module("p2pshare_cli.output")
_compute_line = importlib.import_module("p2pshare_cli.status_text")._compute_line
_share_line = _main._share_line
count = _output.count
human_rate = _output.human_rate

CID = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"


def share(**fields: Any) -> dict[str, Any]:
    doc = {"cid": CID, "name": None, "path": "/home/u/a.txt", "size": 30, "files": 1}
    return doc | {"pinned": False, "stored": False, "stale": None} | fields


def test_counts_are_singular_for_one() -> None:
    assert count(1, "file") == "1 file"
    assert count(0, "file") == "0 files"
    assert count(2, "peer") == "2 peers"
    assert "1 file " in _share_line(share())
    assert "1 files" not in _share_line(share())


def test_small_transfers_do_not_show_a_zero_rate() -> None:
    assert human_rate(30, 0.01) == "2.9 KiB/s"
    assert human_rate(30, 1.0) == "30 B/s"
    assert human_rate(5 * 1024 * 1024, 2.0) == "2.5 MiB/s"
    assert human_rate(30, 0) == "instantly"


def test_ls_shows_the_path_the_user_shared_for_a_stored_copy() -> None:
    line = _share_line(share(stored=True, pinned=True))
    assert line.endswith("/home/u/a.txt (stored copy)  [pinned, stored]")
    assert "content/" not in line


def test_status_shows_the_compute_offer() -> None:
    home = Home(Path("/srv/node"))
    assert _compute_line(None, home).startswith("off")
    offer = {"enabled": True, "ready": True, "slots": 2, "running": 1, "free": 1, "jobs_done": 1}
    assert _compute_line(offer, home) == "on, 2 slots (1 running, 1 free), 1 job done"
    assert _compute_line(offer | {"enabled": False}, home) == (
        "off (turn it on with: p2pshare compute offer --on)"
    )
    chosen = Home(Path("/srv/my node"), explicit=True)
    assert _compute_line(None, chosen) == (
        "off (turn it on with: p2pshare --home '/srv/my node' compute offer --on)"
    )
