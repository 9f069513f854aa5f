"""A new share is announced before `share` returns, and again once a first peer connects;
revoked content and a private share for its recipients only never are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from p2pshare.config import NetworkConfig
from p2pshare.identity import NodeKey
from p2pshare.node.discovery import FIRST_ANNOUNCE_WAIT, Discovery
from p2pshare.node.shares_api import SharesApi
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.source import LocalContent

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


async def test_revoked_content_held_again_is_never_announced(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    """Not by the periodic re-provide, a download's announcement or a peer connecting."""
    network = AnnouncingNetwork(known=0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    assert await discovery.announce_new(cid) == 0  # no peer took it: waits for one
    store.remove(cid, revoke=True)
    # Held again, as a `get` of it does (it pins what it fetched), revocation kept.
    assert new_share(store, tmp_path) == cid
    assert store.catalog.is_revoked(cid)
    network.provided.clear()
    network.known = 4
    discovery.provide_soon(cid)
    await discovery.provide_all()
    assert network.connected is not None
    network.connected(PEER)
    await trio.sleep(3 * NetworkConfig().reprovide_interval)
    assert network.provided == []


async def test_a_private_share_only_its_recipients_may_fetch_is_never_announced(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    network = AnnouncingNetwork(known=4)
    discovery = await running(network)
    (tmp_path / "secret.txt").write_bytes(b"for one peer")
    secret = store.commit(store.prepare_private(tmp_path / "secret.txt", [PEER])).cid
    (tmp_path / "seedable.txt").write_bytes(b"for one peer, seeded by anyone")
    seedable = store.commit(
        store.prepare_private(tmp_path / "seedable.txt", [PEER], anyone_may_seed=True)
    ).cid
    assert await discovery.announce_new(secret) == 0
    assert await discovery.announce_new(seedable) == 4
    await discovery.provide_all()
    assert network.connected is not None
    network.connected(PEER)
    await trio.testing.wait_all_tasks_blocked()
    seedable_key = ContentId.parse(seedable).multihash
    assert network.provided == [seedable_key, seedable_key]


async def test_sharing_revoked_content_again_lifts_the_revocation_and_says_so(
    store: ShareStore, tmp_path: Path
) -> None:
    announced: list[str] = []

    async def on_shared(cid: str) -> int:
        announced.append(cid)
        return 1

    api = SharesApi(store, NodeKey.generate().peer_id, list, 0, on_shared)
    path = tmp_path / "a.txt"
    path.write_bytes(b"shared, revoked, shared again")
    first = await api.share({"path": str(path)}, _no_emit)
    assert first["unrevoked"] is False
    assert (await api.unshare({"cid": first["cid"], "revoke": True}, _no_emit))["revoked"]
    again = await api.share({"path": str(path)}, _no_emit)
    assert again["cid"] == first["cid"]
    assert again["unrevoked"] is True
    assert again["announced_to"] == 1
    assert announced == [first["cid"], first["cid"]]
    assert not store.catalog.is_revoked(first["cid"])
    assert not LocalContent(store).refuses(ContentId.parse(first["cid"]), PEER)


async def _no_emit(_name: str, _data: dict[str, Any]) -> None:
    return None


async def test_a_completed_download_is_not_announced_again_when_its_partial_announcement_holds(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    """The record announced while partial (this peer, its addresses) is the one a
    completed download would announce: once is enough, while it is fresh."""
    network = AnnouncingNetwork(known=4, lookup_seconds=5.0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    discovery.provide_soon(cid)  # the download holds its first chunk
    await trio.sleep(1.0)
    discovery.provide_completed(cid)  # completed while that announcement still runs
    await trio.sleep(10.0)
    assert len(network.provided) == 1
    discovery.provide_completed(cid)  # completed after it reached 4 peers
    await trio.testing.wait_all_tasks_blocked()
    assert len(network.provided) == 1
    assert store.catalog.provide_status()[cid].provided_to == 4
    await trio.sleep(NetworkConfig().reprovide_interval)
    discovery.provide_completed(cid)  # no longer fresh: announced again
    await trio.testing.wait_all_tasks_blocked()
    assert len(network.provided) == 2


async def test_a_completed_download_whose_partial_announcement_reached_no_one_is_announced(
    store: ShareStore, tmp_path: Path, running: Start, autojump_clock: trio.testing.MockClock
) -> None:
    network = AnnouncingNetwork(known=0)
    discovery = await running(network)
    cid = new_share(store, tmp_path)
    discovery.provide_soon(cid)
    await trio.testing.wait_all_tasks_blocked()
    network.known = 2
    discovery.provide_completed(cid)
    await trio.testing.wait_all_tasks_blocked()
    assert len(network.provided) == 2
    assert store.catalog.provide_status()[cid].provided_to == 2
