"""A recipient's copy of a private share is never announced; a seed is (field test: the
recipient re-announced the ciphertext it fetched, telling anyone who asked that it
exists and that this node holds it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio

from p2pshare.identity import NodeKey
from p2pshare.node.discovery import withheld
from p2pshare.node.transfer_api import TransferApi
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer import downloader
from p2pshare.transfer.local import pipe
from p2pshare.transfer.outpath import HomeFence
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import UploadLimiter, serve_transfer

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.transfer.downloader import Source

TIMEOUT = 30.0


class _Network:
    def __init__(self, key: NodeKey) -> None:
        self.peer_id = key.peer_id

    def on_connected(self, _callback: object) -> None:
        return


class _Provider:
    peer_id = "sharer"
    addrs: tuple[str, ...] = ()


class _Discovery:
    """Finds the sharer; records what the node asks to announce."""

    def __init__(self) -> None:
        self.announced: list[str] = []

    def require_peers(self) -> None:
        return

    async def find(
        self, _key: str, _timeout: float, want: int = 1, ask: Sequence[str] = ()
    ) -> list[_Provider]:
        return [_Provider()]

    def provide_soon(self, cid: str) -> None:
        self.announced.append(cid)


async def _no_emit(_event: str, _data: dict[str, Any]) -> None:
    return


class _Pair:
    """A sharer's store, and a recipient node's TransferApi that fetches from it."""

    def __init__(self, tmp_path: Path) -> None:
        self.catalogs = [Catalog(tmp_path / "sharer.sqlite"), Catalog(tmp_path / "own.sqlite")]
        key = NodeKey.generate()
        self.sharer = ShareStore(self.catalogs[0], tmp_path / "c1", NodeKey.generate(), 1 << 16)
        self.own = ShareStore(self.catalogs[1], tmp_path / "c2", key, MIN_CHUNK_SIZE)
        (tmp_path / "home").mkdir()
        self.discovery = _Discovery()
        self.api = TransferApi(
            cast("Any", _Network(key)),
            self.own,
            LocalContent(self.own),
            cast("Any", self.discovery),
            UploadLimiter(),
            0o022,
            1 << 30,
            HomeFence.of(tmp_path / "home"),
        )
        note = tmp_path / "note.bin"
        note.write_bytes(os.urandom(5 * (1 << 16) + 7))
        prepared = self.sharer.prepare_private(note, [key.peer_id], anyone_may_seed=True)
        self.cid = self.sharer.commit(prepared).cid

    async def get(self, **params: Any) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:

            async def open_(_source: Source, _paths: dict[str, str]) -> ByteStream:
                client, server = pipe()
                nursery.start_soon(serve_transfer, server, LocalContent(self.sharer))
                return client

            self.api._open = open_  # type: ignore[method-assign,assignment]
            await nursery.start(self.api.downloads.run)
            with trio.fail_after(TIMEOUT):
                result = await self.api.get({"ref": self.cid, **params}, _no_emit)
            nursery.cancel_scope.cancel()
        return result


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[_Pair]:
    made = _Pair(tmp_path)
    try:
        yield made
    finally:
        for catalog in made.catalogs:
            catalog.close()


async def test_a_recipient_s_get_never_announces_the_share_until_it_seeds_it(
    pair: _Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every download slow, so announcing while partial is tried too.
    monkeypatch.setattr(downloader, "slow", lambda **_: True)
    got = await pair.get(dest=str(tmp_path / "got.bin"))
    assert got["private"]
    assert (tmp_path / "got.bin").read_bytes() == (tmp_path / "note.bin").read_bytes()
    # Not while partial, not when complete, not at a re-provide or restart.
    assert pair.discovery.announced == []
    assert withheld(pair.own.catalog, pair.cid) == (
        "a private share received here, announced only if this node seeds it (seed CID)"
    )
    # Asked to seed the copy it holds, it announces it from then on.
    assert (await pair.get(seed_only=True))["seed_only"]
    assert pair.discovery.announced == [pair.cid]
    assert withheld(pair.own.catalog, pair.cid) is None


async def test_a_seed_is_announced_while_partial_and_when_complete(
    pair: _Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A download this fast is not worth finding while partial (swarm.slow, tested on
    # its own): here every download is slow, to see the seed's partial announced.
    monkeypatch.setattr(downloader, "slow", lambda **_: True)
    assert (await pair.get(seed_only=True))["seed_only"]
    assert pair.discovery.announced == [pair.cid, pair.cid]
    assert withheld(pair.own.catalog, pair.cid) is None
    # unpin: no longer a seed, so no longer announced.
    pair.own.set_pinned(pair.cid, pinned=False)
    assert withheld(pair.own.catalog, pair.cid) is not None
