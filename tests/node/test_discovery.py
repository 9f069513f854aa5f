"""Discovery against a fake Network: joining and remembering peers in plain strings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pshare.config import NetworkConfig
from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.peers import PeerAddrs
from p2pshare.node.discovery import Discovery
from p2pshare.store.catalog import Catalog, KnownPeer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ME, REMEMBERED, BOOTSTRAP = (NodeKey.generate().peer_id for _ in range(3))


class FakeNetwork:
    """Reaches REMEMBERED only; records every dial."""

    peer_id = ME

    def __init__(self) -> None:
        self.dialed: list[PeerAddrs] = []
        self.routed: list[str] = []
        self.connected: list[PeerAddrs] = []

    async def connect(self, peer: PeerAddrs, _timeout: float) -> str | None:
        self.dialed.append(peer)
        if peer.peer_id != REMEMBERED:
            raise UserError(f"could not connect to {peer.peer_id}: connection refused")
        return peer.addrs[0]

    async def add_to_routing_table(self, peer_id: str) -> bool:
        self.routed.append(peer_id)
        return True

    def connected_peers(self) -> list[PeerAddrs]:
        return self.connected


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield catalog
    catalog.close()


async def test_join_dials_each_peer_once_skipping_itself_and_damaged_entries(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    catalog.save_peers(
        [
            KnownPeer(REMEMBERED, ("/ip4/192.0.2.1/tcp/4001",), 3),
            KnownPeer(BOOTSTRAP, ("/ip4/192.0.2.9/tcp/4001",), 2),
            KnownPeer("damaged-row", ("/ip4/192.0.2.3/tcp/4001",), 1),
            KnownPeer(ME, ("/ip4/127.0.0.1/tcp/4001",), 1),
        ],
        10,
    )
    config = NetworkConfig(
        bootstrap=(
            f"/ip4/192.0.2.2/tcp/4001/p2p/{BOOTSTRAP}",
            "/ip4/192.0.2.2/tcp/4001",
            f"/ip4/127.0.0.1/tcp/4001/p2p/{ME}",
        )
    )
    network = FakeNetwork()
    discovery = Discovery(network, catalog, config)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="p2pshare.node.discovery")

    report = await discovery.join()

    assert (report.attempted, report.connected) == (2, 1)
    # A bootstrap entry wins over the address remembered for the same peer.
    assert sorted(network.dialed, key=lambda p: p.peer_id != REMEMBERED) == [
        PeerAddrs(REMEMBERED, ("/ip4/192.0.2.1/tcp/4001",)),
        PeerAddrs(BOOTSTRAP, ("/ip4/192.0.2.2/tcp/4001",)),
    ]
    assert network.routed == [REMEMBERED]
    assert "bootstrap entry '/ip4/192.0.2.2/tcp/4001' skipped" in caplog.text
    assert f"could not reach {BOOTSTRAP}: could not connect to {BOOTSTRAP}" in caplog.text


async def test_the_address_a_peer_was_dialed_at_is_remembered_first(catalog: Catalog) -> None:
    catalog.save_peers([KnownPeer(REMEMBERED, ("/ip4/192.0.2.1/tcp/4001",), 1)], 10)
    network = FakeNetwork()
    discovery = Discovery(network, catalog, NetworkConfig())  # type: ignore[arg-type]
    await discovery.join()
    network.connected = [PeerAddrs(REMEMBERED, ("/ip4/0.0.0.0/tcp/4001", "/ip4/10.0.0.5/tcp/4001"))]
    discovery.remember_peers_now()
    assert [(p.peer_id, p.addrs) for p in catalog.known_peers()] == [
        (REMEMBERED, ("/ip4/192.0.2.1/tcp/4001", "/ip4/10.0.0.5/tcp/4001"))
    ]


async def test_addresses_changing_while_the_daemon_stops_is_harmless(catalog: Catalog) -> None:
    """A router mapping is removed on stop, which changes the announced addresses after
    discovery's nursery may have closed: no re-announcement, and no error."""
    discovery = Discovery(FakeNetwork(), catalog, NetworkConfig())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        discovery._nursery = nursery
    discovery.addresses_changed()


class JoiningNetwork(FakeNetwork):
    """FakeNetwork with what Discovery.run needs; its own-ID lookup takes ``lookup_s``
    (or fails) and is recorded with the time it ended."""

    def __init__(self, lookup_s: float = 0.5, *, fails: bool = False) -> None:
        super().__init__()
        self.lookup_s = lookup_s
        self.fails = fails
        self.lookups_done: list[float] = []

    async def run_dht(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    def on_connected(self, _callback: object) -> None:
        return

    async def find_neighbours(self) -> None:
        await trio.sleep(self.lookup_s)
        if self.fails:
            raise RuntimeError("lookup failed")
        self.lookups_done.append(trio.current_time())


async def _ready_after(network: JoiningNetwork, catalog: Catalog, config: NetworkConfig) -> float:
    """Seconds until Discovery.run says the node is ready."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(Discovery(network, catalog, config).run)  # type: ignore[arg-type]
        ready = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return ready


async def test_a_node_that_joined_looks_up_its_own_neighbours_before_it_is_ready(
    catalog: Catalog, autojump_clock: trio.testing.MockClock
) -> None:
    """The Kademlia join: a node knowing only its bootstrap peers fills its routing
    table with the peers closest to it (and they learn of it) before it says ready."""
    catalog.save_peers([KnownPeer(REMEMBERED, ("/ip4/192.0.2.1/tcp/4001",), 1)], 10)
    network = JoiningNetwork(lookup_s=0.5)
    assert await _ready_after(network, catalog, NetworkConfig()) == pytest.approx(0.5)
    assert network.lookups_done == [pytest.approx(0.5)]


async def test_no_lookup_without_a_peer_and_a_slow_or_failing_one_never_holds_up_readiness(
    catalog: Catalog, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    alone = JoiningNetwork()
    assert await _ready_after(alone, catalog, NetworkConfig()) == 0
    assert alone.lookups_done == []
    catalog.save_peers([KnownPeer(REMEMBERED, ("/ip4/192.0.2.1/tcp/4001",), 1)], 10)
    config = NetworkConfig()
    slow = JoiningNetwork(lookup_s=10 * config.connect_timeout)
    assert await _ready_after(slow, catalog, config) == pytest.approx(config.connect_timeout)
    failing = JoiningNetwork(fails=True)
    assert await _ready_after(failing, catalog, config) == pytest.approx(0.5)
    assert "looking up this node's neighbours failed" in caplog.text
