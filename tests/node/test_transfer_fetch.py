"""TransferApi.fetch (a worker fetching a job's content): hinted peers first, then the DHT."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio

from p2pshare.identity import NodeKey
from p2pshare.node.transfer_api import TransferApi
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.downloader import Source
from p2pshare.transfer.failures import ContentTooLargeError
from p2pshare.transfer.local import pipe
from p2pshare.transfer.outpath import HomeFence
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import UploadLimiter, serve_transfer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from p2pshare.net.streams import ByteStream


class _Network:
    """What TransferApi.fetch asks of the network: its peer ID and a way to watch peers."""

    def __init__(self) -> None:
        self.peer_id = NodeKey.generate().peer_id

    def on_connected(self, _callback: object) -> None:
        return


@dataclass(frozen=True)
class _Provider:
    peer_id: str
    addrs: tuple[str, ...] = ()


class _Discovery:
    def __init__(self, providers: list[_Provider]) -> None:
        self.providers = providers
        self.lookups = 0

    async def find(
        self, _key: str, _timeout: float, want: int = 1, ask: Sequence[str] = ()
    ) -> list[_Provider]:
        self.lookups += 1
        return self.providers


def _left_at(directory: Path) -> list[Path]:
    """What a fetch to ``directory``/fetched.bin wrote there, its partial included."""
    return list(directory.glob("*fetched*"))


@dataclass
class _Setup:
    api: TransferApi
    discovery: _Discovery
    cid: ContentId
    data: bytes
    holders: dict[str, LocalContent]


@asynccontextmanager
async def _fetching(tmp_path: Path) -> AsyncIterator[_Setup]:
    """A TransferApi whose peers are "seed" (holds the content) and "empty" (does not),
    reached over in-memory pipes; the DHT names the seed."""
    seed_catalog = Catalog(tmp_path / "seed.sqlite")
    own_catalog = Catalog(tmp_path / "own.sqlite")
    try:
        seed = ShareStore(seed_catalog, tmp_path / "c1", NodeKey.generate(), MIN_CHUNK_SIZE)
        data = os.urandom(3 * MIN_CHUNK_SIZE + 5)
        (tmp_path / "input.bin").write_bytes(data)
        cid = ContentId.parse(seed.commit(seed.prepare(tmp_path / "input.bin")).cid)
        own = ShareStore(own_catalog, tmp_path / "c2", NodeKey.generate(), MIN_CHUNK_SIZE)
        home = tmp_path / "home"
        home.mkdir()
        holders = {"seed": LocalContent(seed), "empty": LocalContent(own)}
        discovery = _Discovery([_Provider("seed")])
        api = TransferApi(
            cast("Any", _Network()),
            own,
            LocalContent(own),
            cast("Any", discovery),
            UploadLimiter(),
            0o022,
            1 << 30,
            HomeFence.of(home),
        )
        async with trio.open_nursery() as nursery:

            async def open_(source: Source, _paths: dict[str, str]) -> ByteStream:
                client, server = pipe()
                nursery.start_soon(serve_transfer, server, holders[source.peer_id])
                return client

            api._open = open_  # type: ignore[method-assign,assignment]
            yield _Setup(api, discovery, cid, data, holders)
            nursery.cancel_scope.cancel()
    finally:
        seed_catalog.close()
        own_catalog.close()


async def test_fetch_asks_the_dht_when_the_hinted_peer_lacks_the_content(tmp_path: Path) -> None:
    dest = tmp_path / "fetched.bin"
    async with _fetching(tmp_path) as setup:
        with trio.fail_after(30):
            await setup.api.fetch(setup.cid, dest, hints=[Source("empty")], max_bytes=None)
    assert dest.read_bytes() == setup.data
    assert setup.discovery.lookups >= 1


async def test_fetch_refuses_content_larger_than_max_bytes_from_its_manifest(
    tmp_path: Path,
) -> None:
    """A compute worker's ``--max-input``: the manifest's size is enough to refuse, and
    nothing is left where the content would have gone."""
    dest = tmp_path / "fetched.bin"
    async with _fetching(tmp_path) as setup:
        limit = len(setup.data) - 1
        with trio.fail_after(30), pytest.raises(ContentTooLargeError, match="more than the"):
            await setup.api.fetch(setup.cid, dest, hints=[Source("seed")], max_bytes=limit)
        assert not _left_at(tmp_path), "a refused fetch left a file"
        with trio.fail_after(30):
            await setup.api.fetch(
                setup.cid, dest, hints=[Source("seed")], max_bytes=len(setup.data)
            )
    assert dest.read_bytes() == setup.data
