"""Private shares in the store of a node that seeds them, between real daemons.

Seeded ciphertext is the node's, not the user's: 0700/0600 whatever the umask of the
daemon, pinned (gc keeps it and says so), and counted against ``[store] quota_bytes``:
a seed that would not fit beside the other pinned content is refused before anything
is fetched, and a refused seed leaves nothing in the store.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli
from p2pshare.proto.sealed import TAG_SIZE
from tests.integration.cluster import cli_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
MIB = 1 << 20
CHUNK = 1 << 20
QUOTA = 5 * MIB
FRIEND = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"


@pytest.fixture
def nodes(short_tmp: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """A sharer, and a seeder with a 5 MiB store quota started with umask 022."""
    sharer_home, seeder_home = Home(short_tmp / "sharer"), Home(short_tmp / "seeder")
    init_home(sharer_home)
    init_home(seeder_home)
    config = seeder_home.config_path.read_text()
    seeder_home.config_path.write_text(
        config.replace("quota_bytes = 10737418240", f"quota_bytes = {QUOTA}")
    )
    old = os.umask(0o022)
    try:
        with DaemonProcess(sharer_home) as sharer, DaemonProcess(seeder_home) as seeder:
            sharer.start()
            seeder.start()
            os.umask(old)
            yield sharer, seeder
    finally:
        os.umask(old)


def _share(sharer: DaemonProcess, tmp_path: Path, name: str, size: int) -> Any:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return cli_json(sharer.home, "share", str(path), "--to", FRIEND, "--anyone-may-seed")


def _modes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): oct(stat.S_IMODE(path.lstat().st_mode))
        for path in [root, *root.rglob("*")]
    }


def test_seeded_ciphertext_is_private_pinned_and_listed_by_its_plaintext_size(
    nodes: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    sharer, seeder = nodes
    shared = _share(sharer, tmp_path, "plans.bin", 3 * MIB)
    assert shared["size"] == 3 * MIB
    assert shared["ciphertext_size"] == 3 * MIB + 4 * TAG_SIZE

    assert cli_json(seeder.home, "seed", shared["ticket"])["seed_only"]
    content = seeder.home.content_dir
    modes = _modes(content)
    assert len(modes) == 4, modes  # content/, <digest>/, tree/, tree/000000
    for name, mode in modes.items():
        assert mode == ("0o700" if (content / name).is_dir() else "0o600"), name

    [listed] = cli_json(seeder.home, "ls")["shares"]
    assert (listed["size"], listed["ciphertext_size"]) == (3 * MIB, 3 * MIB + 4 * TAG_SIZE)
    assert listed["pinned"]
    human = run_cli(seeder.home, "ls").stdout
    assert "3.0 MiB" in human
    assert "(encrypted copy)" in human

    kept = cli_json(seeder.home, "gc")
    assert (kept["removed"], kept["pinned"]) == ([], 1)
    said = run_cli(seeder.home, "gc").stdout
    assert "kept 1 pinned item (3.0 MiB): unpin CID to let gc remove one" in said
    cli_json(seeder.home, "unpin", shared["cid"])
    assert cli_json(seeder.home, "gc")["removed"] == [shared["cid"]]
    assert list(content.iterdir()) == []


def test_a_seed_beyond_the_quota_is_refused_before_anything_is_fetched(
    nodes: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    sharer, seeder = nodes
    first = _share(sharer, tmp_path, "first.bin", 3 * MIB)
    second = _share(sharer, tmp_path, "second.bin", 3 * MIB)
    cli_json(seeder.home, "seed", first["ticket"])
    refused = run_cli(seeder.home, "seed", second["ticket"], timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: cannot seed {second['cid']}: it takes 3.1 MB and pinned content already "
        "takes 3.1 MB of the store quota of 5.2 MB; nothing was fetched. Unpin or unshare "
        "stored content you no longer need (p2pshare ls), or raise [store] quota_bytes in "
        "config.toml"
    ]
    digest = sorted(p.name for p in seeder.home.content_dir.iterdir())
    assert len(digest) == 1, "only the first seed is in the store"
    assert cli_json(seeder.home, "downloads")["downloads"] == []
    # Once the first is unpinned, gc makes room for the second.
    cli_json(seeder.home, "unpin", first["cid"])
    cli_json(seeder.home, "seed", second["ticket"])
    assert [s["cid"] for s in cli_json(seeder.home, "ls")["shares"]] == [second["cid"]]


def test_a_seed_of_content_that_is_not_private_leaves_nothing_in_the_store(
    nodes: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    sharer, seeder = nodes
    public = tmp_path / "public.txt"
    public.write_text("for everyone\n")
    shared = cli_json(sharer.home, "share", str(public))
    refused = run_cli(seeder.home, "seed", shared["ticket"], timeout=120)
    assert refused.returncode == 1
    assert "is not a private share" in refused.stderr
    assert list(seeder.home.content_dir.iterdir()) == []
