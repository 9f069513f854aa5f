"""TransferApi._open: the libp2p connection first, then the data channel or the stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest
import trio

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.datachannel import DataChannelOpenError
from p2pshare.node.transfer_api import TransferApi
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.downloader import Source
from p2pshare.transfer.local import pipe
from p2pshare.transfer.outpath import HomeFence
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import UploadLimiter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pshare.net.peers import PeerAddrs
    from p2pshare.net.streams import ByteStream


class _Network:
    """A provider that is unreachable, or reachable without a data channel."""

    def __init__(self, *, reachable: bool) -> None:
        self.peer_id = NodeKey.generate().peer_id
        self.reachable = reachable
        self.calls: list[str] = []

    def on_connected(self, _callback: object) -> None:
        return

    async def connect(self, peer: PeerAddrs, timeout: float) -> str | None:
        self.calls.append("connect")
        if not self.reachable:
            raise UserError(f"could not reach {peer.peer_id} within {timeout:g} s")
        return None

    async def open_data_channel(self, *_args: object, **_kwargs: object) -> ByteStream:
        self.calls.append("offer")
        raise DataChannelOpenError("the peer lacks the data protocol")

    async def open_stream(self, *_args: object) -> ByteStream:
        self.calls.append("stream")
        return pipe()[0]

    def connection_path(self, _peer_id: str) -> str:
        return "direct"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "own.sqlite")
    yield catalog
    catalog.close()


def _api(network: _Network, catalog: Catalog, root: Path) -> TransferApi:
    own = ShareStore(catalog, root / "content", NodeKey.generate(), MIN_CHUNK_SIZE)
    (root / "home").mkdir()
    return TransferApi(
        cast("Any", network),
        own,
        LocalContent(own),
        cast("Any", None),
        UploadLimiter(),
        0o022,
        1 << 30,
        HomeFence.of(root / "home"),
    )


async def test_an_unreachable_provider_is_dialed_once(tmp_path: Path, catalog: Catalog) -> None:
    """Not once for the offer and again for the libp2p stream: both need the connection."""
    network = _Network(reachable=False)
    api = _api(network, catalog, tmp_path)
    paths: dict[str, str] = {}
    with trio.fail_after(5), pytest.raises(UserError, match="could not reach"):
        await api._open(Source("provider", ("/ip4/127.0.0.1/tcp/1",)), paths)
    assert network.calls == ["connect"]
    assert paths == {}


async def test_a_provider_without_a_data_channel_gets_the_libp2p_stream(
    tmp_path: Path, catalog: Catalog
) -> None:
    network = _Network(reachable=True)
    api = _api(network, catalog, tmp_path)
    paths: dict[str, str] = {}
    with trio.fail_after(5):
        await api._open(Source("provider", ("/ip4/127.0.0.1/tcp/1",)), paths)
    assert network.calls == ["connect", "offer", "stream"]
    assert paths == {"provider": "libp2p"}
