"""ls, status and reprovide see a share whose files changed, by stat alone (no daemon)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.config import NetworkConfig
from p2pshare.identity import NodeKey
from p2pshare.node.discovery import Discovery
from p2pshare.node.shares_api import SharesApi, checked_shares
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore, changed_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHUNK = MIN_CHUNK_SIZE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "content", NodeKey.generate(), CHUNK)
    catalog.close()


def share(store: ShareStore, path: Path, **kwargs: Any) -> str:
    return store.commit(store.prepare(path, **kwargs)).cid


def reason_now(store: ShareStore, cid: str) -> str | None:
    row = store.catalog.share(cid)
    assert row is not None
    return changed_file(store.share_files(row))


def test_stat_check_sees_an_overwritten_replaced_or_missing_file(
    store: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("a", "b", "c", "d"):
        (tree / name).write_bytes(b"x" * 100)
    cid = share(store, tree)
    assert reason_now(store, cid) is None
    (tree / "a").write_bytes(b"small")
    assert reason_now(store, cid) == f"{tree / 'a'} changed on disk since it was shared"
    cid = share(store, tree)
    st = (tree / "b").stat()
    (tree / "b").write_bytes(b"y" * 100)
    os.utime(tree / "b", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert "changed on disk" in (reason_now(store, cid) or "")
    cid = share(store, tree)
    (tree / "c").unlink()
    (tree / "c").symlink_to(tree / "d")
    assert "changed on disk" in (reason_now(store, cid) or "")
    (tree / "c").unlink()
    assert "cannot be opened" in (reason_now(store, cid) or "")


async def test_ls_reports_an_overwritten_download_as_stale(
    store: ShareStore, tmp_path: Path
) -> None:
    """Field test #17: a share overwritten by `get --force` was listed as fresh."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * CHUNK))
    cid = share(store, path)
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"k")
    other = share(store, kept)
    path.write_bytes(b"small now")
    api = SharesApi(store, NodeKey.generate().peer_id, list, 0, _announce)
    listed = {s["cid"]: s for s in (await api.ls({}, _no_emit))["shares"]}
    assert "changed on disk" in listed[cid]["stale"]
    assert listed[other]["stale"] is None
    row = store.catalog.share(cid)
    assert row is not None
    assert row.stale_reason


async def _no_emit(_name: str, _data: dict[str, Any]) -> None:
    return None


async def _announce(_cid: str) -> int | None:
    return None


class _Network:
    def __init__(self) -> None:
        self.provided: list[bytes] = []

    def announce_addrs(self) -> list[str]:
        return []

    async def provide(self, key: bytes, _addrs: object, _known_sent: object = None) -> int:
        self.provided.append(key)
        return 1


async def test_reprovide_skips_a_share_whose_file_changed(
    store: ShareStore, tmp_path: Path
) -> None:
    changed = tmp_path / "changed.bin"
    changed.write_bytes(b"c" * 10)
    stale_cid = share(store, changed)
    fine = tmp_path / "fine.bin"
    fine.write_bytes(b"f" * 10)
    fine_cid = share(store, fine)
    changed.write_bytes(b"longer than before")
    network = _Network()
    discovery = Discovery(
        network,  # type: ignore[arg-type]
        store.catalog,
        NetworkConfig(),
        shares=functools.partial(checked_shares, store),
    )
    await discovery.provide_all()
    assert network.provided == [ContentId.parse(fine_cid).multihash]
    row = store.catalog.share(stale_cid)
    assert row is not None
    assert row.stale_reason
