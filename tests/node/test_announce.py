"""A new share is announced before `share` returns, and again once a first peer connects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pshare.config import NetworkConfig
from p2pshare.identity import NodeKey
from p2pshare.node.discovery import FIRST_ANNOUNCE_WAIT, Discovery
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path
    from typing import TypeAlias

    from p2pshare.net.peers import PeerAddrs

    Start: TypeAlias = Callable[["AnnouncingNetwork"], Awaitable[Discovery]]

PEER = NodeKey.generate().peer_id


class AnnouncingNetwork:
    """Takes the closest known peers' count from ``known``, then ``lookup`` more after
    ``lookup_seconds``; ``known_after`` seconds pass before the known peers have it."""

    peer_id = NodeKey.generate().peer_id

    def __init__(self, known: int, *, known_after: float = 0.0, lookup_seconds: float = 0.0):
        self.known = known
        self.known_after = known_after
        self.lookup_seconds = lookup_seconds
        self.provided: list[bytes] = []
        self.connected: Callable[[str], None] | None = None

    async def run_dht(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    def on_connected(self, callback: Callable[[str], None]) -> None:
        self.connected = callback

    def announce_addrs(self) -> list[str]:
        return ["/ip4/192.0.2.7/tcp/4001"]

    def connected_peers(self) -> list[PeerAddrs]:
        return []

    async def provide(
        self, key: bytes, _addrs: object, on_known_sent: Callable[[int], None] | None = None
    ) -> int:
        self.provided.append(key)
        await trio.sleep(self.known_after)
        if on_known_sent is not None:
            on_known_sent(self.known)
        await trio.sleep(self.lookup_seconds)
        return self.known


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "content", NodeKey.generate(), MIN_CHUNK_SIZE)
    catalog.close()


@pytest.fixture
async def running(store: ShareStore) -> AsyncIterator[Start]:
    async with trio.open_nursery() as nursery:

        async def start(network: AnnouncingNetwork) -> Discovery:
            discovery = Discovery(network, store.catalog, NetworkConfig())  # type: ignore[arg-type]
            await nursery.start(discovery.run)
            await trio.testing.wait_all_tasks_blocked()
            return discovery

        yield start
        nursery.cancel_scope.cancel()


def new_share(store: ShareStore, tmp_path: Path, name: str = "a.txt") -> str:
    path = tmp_path / name
    path.write_bytes(b"some content " + name.encode())
    return store.commit(store.prepare(path)).cid


async def test_share_returns_once_the_known_peers_hold_the_record_while_the_lookup_goes_on(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    network = AnnouncingNetwork(known=3, known_after=0.1, lookup_seconds=30.0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    start = trio.current_time()
    assert await discovery.announce_new(cid) == 3
    assert trio.current_time() - start == pytest.approx(0.1)
    provided = store.catalog.provide_status()
    assert provided[cid].provided_to == 3


async def test_share_waits_for_slow_peers_only_a_bounded_time(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    network = AnnouncingNetwork(known=3, known_after=60.0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    start = trio.current_time()
    assert await discovery.announce_new(cid) is None
    assert trio.current_time() - start == pytest.approx(FIRST_ANNOUNCE_WAIT)
    await trio.sleep(60.0)
    assert store.catalog.provide_status()[cid].provided_to == 3


async def test_a_share_no_peer_took_is_announced_again_when_a_peer_connects(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    network = AnnouncingNetwork(known=0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    assert await discovery.announce_new(cid) == 0
    await trio.testing.wait_all_tasks_blocked()
    assert store.catalog.provide_status()[cid].provided_to == 0
    assert len(network.provided) == 1

    network.known = 4
    assert network.connected is not None
    network.connected(PEER)
    network.connected(PEER)  # a second connection before the first re-announcement ends
    await trio.testing.wait_all_tasks_blocked()
    assert len(network.provided) == 2
    assert store.catalog.provide_status()[cid].provided_to == 4

    network.connected(PEER)  # announced now: nothing more to do
    await trio.testing.wait_all_tasks_blocked()
    assert len(network.provided) == 2
