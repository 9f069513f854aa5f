"""The DHT facade with in-process hosts on 127.0.0.1."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, NoReturn, cast

import trio
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStore
from multiaddr import Multiaddr

from p2pshare.identity import NodeKey
from p2pshare.metrics import METRICS
from p2pshare.net import routing
from p2pshare.net.dht import QUERY_TIMEOUT, Dht, get_providers_and_closers
from p2pshare.net.host import running_host
from p2pshare.net.records import VerifiedRecords
from p2pshare.net.routing import KAD_IDLE_LIMIT, RoutingFeeder
from p2pshare.net.streams import HandlerGuard, HandlerLimits
from p2pshare.net.walks import LookupTrace

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pytest
    from libp2p.abc import IHost, INetStream
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht import KadDHT

BLAKE3_MULTIHASH = b"\x1e\x20"


async def start_line(
    stack: AsyncExitStack, nursery: trio.Nursery, count: int
) -> list[tuple[IHost, Dht]]:
    nodes = []
    for _ in range(count):
        host = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        dht = Dht(host, HandlerGuard(host, HandlerLimits()), requests_per_second=100)
        await nursery.start(dht.run)
        nodes.append((host, dht))
    for (left, _), (right, _) in itertools.pairwise(nodes):
        with trio.fail_after(10):
            await left.connect(info_from_p2p_addr(right.get_addrs()[0]))
    return nodes


async def test_a_provider_is_found_across_a_line_of_six_nodes() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nodes = await start_line(stack, nursery, 6)
        (first, first_dht), (_, last_dht) = nodes[0], nodes[-1]
        with trio.fail_after(20):
            accepted = await first_dht.provide(key, first.get_addrs())
        assert accepted >= 1
        with trio.fail_after(20):
            providers = await last_dht.find_providers(key)
        assert [p.peer_id for p in providers] == [first.get_id().to_base58()]
        assert providers[0].addrs
        with trio.fail_after(20):
            again = await last_dht.find_providers(key)
        assert len(again) == 1, "providers are merged per peer"
        with trio.fail_after(20):
            assert await last_dht.find_providers(BLAKE3_MULTIHASH + os.urandom(32)) == []
        nursery.cancel_scope.cancel()


async def test_routing_table_is_fed_from_connections() -> None:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (_, a_dht), (_, b_dht) = await start_line(stack, nursery, 2)
        with trio.fail_after(10):
            while a_dht.routing_table_size() < 1 or b_dht.routing_table_size() < 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_find_walks_to_peers_it_learns_of_and_counts_hops() -> None:
    """Node 0 knows only node 1; the record sits only on node 3. The lookup must dial
    peers named in answers (their addresses come with the answer), three hops away."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nodes = await start_line(stack, nursery, 4)
        holder_host, holder_dht = nodes[3]
        provider = PeerInfo(holder_host.get_id(), holder_host.get_addrs())
        holder_dht._kad.provider_store.add_provider(key, provider)
        trace = LookupTrace()
        with trio.fail_after(20):
            providers = await nodes[0][1].find_providers(key, trace=trace)
        assert [p.peer_id for p in providers] == [holder_host.get_id().to_base58()]
        assert trace.hops == 3
        nursery.cancel_scope.cancel()


async def test_a_lookup_is_counted_with_its_get_providers_messages_and_bytes() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nodes = await start_line(stack, nursery, 3)
        holder_host, holder_dht = nodes[2]
        provider = PeerInfo(holder_host.get_id(), holder_host.get_addrs())
        holder_dht._kad.provider_store.add_provider(key, provider)
        before = METRICS.snapshot()["dht"]
        with trio.fail_after(20):
            assert await nodes[0][1].find_providers(key)
        after = METRICS.snapshot()["dht"]
        assert after["lookups"] == before["lookups"] + 1
        assert after["lookup_seconds_total"] > before["lookup_seconds_total"]
        # Node 1 named node 2, node 2 held the record: two requests at least.
        assert after["messages"] - before["messages"] >= 2
        assert after["message_bytes"] - before["message_bytes"] > 0
        nursery.cancel_scope.cancel()


async def test_a_provide_counts_its_find_node_lookup_and_add_provider_messages() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (first, first_dht), *_ = await start_line(stack, nursery, 3)
        before = METRICS.snapshot()["dht"]
        with trio.fail_after(20):
            accepted = await first_dht.provide(key, first.get_addrs())
        after = METRICS.snapshot()["dht"]
        # One ADD_PROVIDER per peer that took the record, and the lookup that found the
        # third node through the second asked at least one FIND_NODE on top.
        assert accepted == 2
        sent = after["provide_messages"] - before["provide_messages"]
        assert sent >= accepted + 1
        assert after["provide_message_bytes"] - before["provide_message_bytes"] > 100 * sent
        assert after["messages"] == before["messages"], "no GET_PROVIDERS: that is a find's"
        nursery.cancel_scope.cancel()


async def test_a_refresh_walks_the_network_counted_as_routing_messages() -> None:
    """Node 0 knows only node 1; its refresh (own ID, then each bucket) reaches node 2
    through node 1's answer, with FIND_NODE counted apart from finds and provides."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (first, first_dht), _, (last, _) = await start_line(stack, nursery, 3)
        await wait_for_table(first_dht, 1)
        before = METRICS.snapshot()["dht"]
        with trio.fail_after(20):
            await first_dht.maintain()
        after = METRICS.snapshot()["dht"]
        assert last.get_id() in first.get_connected_peers()
        await wait_for_table(first_dht, 2)
        assert after["routing_messages"] - before["routing_messages"] >= 2
        assert after["routing_message_bytes"] > before["routing_message_bytes"]
        assert after["messages"] == before["messages"]
        assert after["provide_messages"] == before["provide_messages"]
        nursery.cancel_scope.cancel()


async def test_provide_reports_once_the_known_peers_hold_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nodes = await start_line(stack, nursery, 3)
        (first, first_dht), (_, middle_dht) = nodes[0], nodes[1]
        lookup_started = trio.Event()

        async def endless_lookup(_key: bytes, _count: Callable[[int], None]) -> list[ID]:
            lookup_started.set()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        # The network lookup for closer peers never ends here; the record still goes
        # out to the one peer `first` knows, and the caller hears of it.
        monkeypatch.setattr(first_dht, "closest_peers", endless_lookup)
        counts: list[int] = []
        nursery.start_soon(first_dht.provide, key, first.get_addrs(), counts.append)
        with trio.fail_after(10):
            await lookup_started.wait()
        assert counts == [1]
        # Still under way (its network lookup never ends): the provide queue shows it.
        assert METRICS.snapshot()["dht"]["provides_running"] >= 1
        with trio.fail_after(10):
            providers = await middle_dht.find_providers(key)
        assert [p.peer_id for p in providers] == [first.get_id().to_base58()]
        nursery.cancel_scope.cancel()


async def test_many_providers_are_handed_out_at_random_not_first_come() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (_, asker), (_, holder) = await start_line(stack, nursery, 2)
        stored = []
        for port in range(20):
            peer = ID.from_base58(NodeKey.generate().peer_id)
            stored.append(peer.to_base58())
            addr = Multiaddr(f"/ip4/127.0.0.1/tcp/{40000 + port}")
            holder._kad.provider_store.add_provider(key, PeerInfo(peer, [addr]))
        seen: set[str] = set()
        for _ in range(20):
            with trio.fail_after(10):
                providers = await asker.find_providers(key, limit=15)
            assert len(providers) == 15
            assert {p.peer_id for p in providers} <= set(stored)
            seen.update(p.peer_id for p in providers)
        # The first 15 stored every time would leave 5 never named; with random draws the
        # chance that some peer is missed by all 20 (15 of 20 each) is below 1e-10.
        assert seen == set(stored)
        nursery.cancel_scope.cancel()


async def test_a_record_this_node_holds_does_not_end_the_lookup() -> None:
    """A downloader held the seeder's record (the seeder provides to the peers it knows)
    and so never asked the network: of a crowd of 100, 24 found nobody but the seeder
    in 12 lookups each and finished last (bench/downloaders.py)."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (_, asker), (_, holder) = await start_line(stack, nursery, 2)
        seeder, other_downloader = (ID.from_base58(NodeKey.generate().peer_id) for _ in "ab")
        asker._kad.provider_store.add_provider(
            key, PeerInfo(seeder, [Multiaddr("/ip4/127.0.0.1/tcp/40001")])
        )
        holder._kad.provider_store.add_provider(
            key, PeerInfo(other_downloader, [Multiaddr("/ip4/127.0.0.1/tcp/40002")])
        )
        with trio.fail_after(10):
            providers = await asker.find_providers(key)
        assert {p.peer_id for p in providers} == {
            seeder.to_base58(),
            other_downloader.to_base58(),
        }
        nursery.cancel_scope.cancel()


async def test_a_request_is_answered_while_the_routing_table_is_busy() -> None:
    """py-libp2p's handler added the asking peer to the routing table before reading
    the request; with the peer's bucket full that pings the oldest peer, with no time
    limit, in one of 12 handler slots. A crowd's seeder reset every request that way."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (asker_host, asker), (holder_host, holder) = await start_line(stack, nursery, 2)
        await wait_for_table(asker, 1)
        holder._kad.provider_store.add_provider(
            key, PeerInfo(holder_host.get_id(), holder_host.get_transport_addrs())
        )

        async def ping_that_never_ends(*_args: object, **_kwargs: object) -> NoReturn:
            await trio.sleep_forever()

        holder._kad.routing_table.remove_peer(asker_host.get_id())
        holder._kad.routing_table.add_peer = ping_that_never_ends  # type: ignore[method-assign]
        with trio.fail_after(5):
            providers = await asker.find_providers(key)
        assert [p.peer_id for p in providers] == [holder_host.get_id().to_base58()]
        nursery.cancel_scope.cancel()


async def test_a_new_connection_is_offered_to_the_routing_table_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the bucket is full and its oldest peer answers a ping, the new peer is not
    added; asking again every 50 ms pinged that peer up to 100 times."""
    peer = ID.from_base58(NodeKey.generate().peer_id)
    peerstore = PeerStore()
    peerstore.add_addrs(peer, [Multiaddr("/ip4/127.0.0.1/tcp/4001")], 3600)
    offers: list[ID] = []

    class Host:
        def get_peerstore(self) -> PeerStore:
            return peerstore

    class FullTable:
        async def add_peer(self, peer_id: ID) -> bool:
            offers.append(peer_id)
            return False

    async with trio.open_nursery() as nursery:
        feeder = RoutingFeeder(cast("IHost", Host()), cast("KadDHT", FullTable()), nursery)
        await feeder._add(peer)
    assert offers == [peer]


async def test_a_lookup_asks_the_peers_it_is_given_beyond_its_routing_table() -> None:
    """A downloader whose only peer was the seeder lost it from its routing table when
    that connection closed, and its lookups then asked nobody; a download now names
    the providers it is linked to, whose addresses it has."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        [(_, asker)] = await start_line(stack, nursery, 1)
        [(holder_host, holder)] = await start_line(stack, nursery, 1)
        holder._kad.provider_store.add_provider(
            key, PeerInfo(holder_host.get_id(), holder_host.get_transport_addrs())
        )
        asker._host.get_peerstore().add_addrs(
            holder_host.get_id(), holder_host.get_transport_addrs(), 3600
        )
        with trio.fail_after(10):
            assert await asker.find_providers(key) == []
            providers = await asker.find_providers(key, ask=[holder_host.get_id()])
        assert [p.peer_id for p in providers] == [holder_host.get_id().to_base58()]
        nursery.cancel_scope.cancel()


def watch_serving(dht: Dht) -> trio.Event:
    """An event set as the DHT's request handler has served a stream to its end."""
    served = trio.Event()
    handle = dht._kad.handle_stream

    async def watched(stream: INetStream) -> None:
        await handle(stream)
        served.set()

    dht._kad.handle_stream = watched  # type: ignore[method-assign]
    return served


class CancelledOnceOpen:
    """A host whose DHT request is cancelled as soon as its stream is open."""

    def __init__(self, host: IHost, request: trio.CancelScope) -> None:
        self._host = host
        self._request = request

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        stream = await self._host.new_stream(peer_id, protocol_ids)
        self._request.cancel()
        return stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


async def test_a_request_cancelled_once_its_stream_is_open_frees_the_servers_slot_at_once() -> None:
    """A lookup that has found enough cancels its other queries. Their streams were
    left open, and the server (12 handler slots for all peers) served each until the
    asker closed it: a seeder with a crowd reset every request once 12 were held."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (asker_host, _), (holder_host, holder) = await start_line(stack, nursery, 2)
        served = watch_serving(holder)
        with trio.CancelScope() as request:
            asker = cast("IHost", CancelledOnceOpen(asker_host, request))
            await get_providers_and_closers(asker, VerifiedRecords(), holder_host.get_id(), key)
        assert request.cancelled_caught
        with trio.fail_after(KAD_IDLE_LIMIT / 2):
            await served.wait()
        nursery.cancel_scope.cancel()


async def test_a_silent_dht_stream_is_ended_by_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """An asker that opens a DHT stream and never writes nor closes it (py-libp2p's own
    lookups, cancelled) held one of the server's 12 slots for the handler's whole bound."""
    monkeypatch.setattr(routing, "KAD_IDLE_LIMIT", 0.2)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (asker_host, _), (holder_host, holder) = await start_line(stack, nursery, 2)
        served = watch_serving(holder)
        with trio.fail_after(5):
            await asker_host.new_stream(holder_host.get_id(), [KAD_PROTOCOL])
            await served.wait()
        nursery.cancel_scope.cancel()


async def test_one_peer_holding_silent_dht_streams_leaves_others_answered() -> None:
    """py-libp2p serves 12 DHT streams at once for all peers: one peer opening 12
    streams and saying nothing took them all, and every other peer's request was reset."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        # A line: the holder is connected to both.
        (asker_host, _), (holder_host, holder), (hog_host, _) = await start_line(stack, nursery, 3)
        holder._kad.provider_store.add_provider(
            key, PeerInfo(holder_host.get_id(), holder_host.get_transport_addrs())
        )
        with trio.fail_after(10):
            for _ in range(12):
                with contextlib.suppress(Exception):
                    await hog_host.new_stream(holder_host.get_id(), [KAD_PROTOCOL])
            providers, _ = await get_providers_and_closers(
                asker_host, VerifiedRecords(), holder_host.get_id(), key
            )
        assert [p.peer_id for p in providers] == [holder_host.get_id()]
        nursery.cancel_scope.cancel()


async def test_a_lookup_with_enough_returns_without_waiting_for_its_other_queries() -> None:
    """A query's stream is opened and closed shielded (kad_stream), so a lookup that
    cancelled its other queries once it had enough waited for each one's stream to
    open: on a busy machine, seconds. Its queries now finish on their own."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (slow_host, _), (asker_host, asker), (holder_host, holder) = await start_line(
            stack, nursery, 3
        )
        holder._kad.provider_store.add_provider(
            key, PeerInfo(holder_host.get_id(), holder_host.get_transport_addrs())
        )
        opening, released = trio.Event(), trio.Event()
        new_stream = asker_host.new_stream

        async def slow_to_open(peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
            if peer_id == slow_host.get_id():
                opening.set()
                await released.wait()
            return await new_stream(peer_id, protocol_ids)

        asker_host.new_stream = slow_to_open  # type: ignore[method-assign]
        with trio.fail_after(QUERY_TIMEOUT / 2):
            providers = await asker.find_providers(
                key, ask=[slow_host.get_id(), holder_host.get_id()]
            )
            await trio.lowlevel.checkpoint()  # a deadline passed while shielded counts
        assert opening.is_set(), "the slow peer was asked"
        assert [p.peer_id for p in providers] == [holder_host.get_id().to_base58()]
        released.set()
        nursery.cancel_scope.cancel()


async def test_lookup_trace_tells_a_finished_lookup_from_one_that_timed_out() -> None:
    """`find` said "within 10 s" after 0.77 s (field test #20): the trace must say
    whether the lookup ran out of peers to ask or out of time."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (_, asker), _ = await start_line(stack, nursery, 2)
        finished = LookupTrace()
        with trio.fail_after(20):
            assert await asker.find_providers(key, trace=finished) == []
        assert (finished.queried, finished.timed_out) == (1, False)
        cut_short = LookupTrace()
        assert (
            await asker.find_providers(key, trace=cut_short, give_up_at=trio.current_time()) == []
        )
        assert cut_short.timed_out
        nursery.cancel_scope.cancel()


async def test_a_lookup_reaches_a_peer_whose_first_known_address_is_stale() -> None:
    """py-libp2p dials one TCP address per peer, the first it knows: a peer that moved
    (remembered address first, new one learnt since) was never asked again."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (asker_host, asker), (holder_host, holder) = await start_line(stack, nursery, 2)
        holder._kad.provider_store.add_provider(
            key, PeerInfo(holder_host.get_id(), holder_host.get_transport_addrs())
        )
        with trio.fail_after(10):
            while asker.routing_table_size() < 1:
                await trio.sleep(0.05)
        await asker_host.disconnect(holder_host.get_id())
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            stale = Multiaddr(f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}")
        store = asker_host.get_peerstore()
        store.clear_addrs(holder_host.get_id())
        store.add_addrs(holder_host.get_id(), [stale, *holder_host.get_transport_addrs()], 3600)
        with trio.fail_after(20):
            providers = await asker.find_providers(key)
        assert [p.peer_id for p in providers] == [holder_host.get_id().to_base58()]
        nursery.cancel_scope.cancel()


async def start_node(stack: AsyncExitStack, nursery: trio.Nursery) -> tuple[IHost, Dht]:
    [node] = await start_line(stack, nursery, 1)
    return node


async def wait_for_table(dht: Dht, size: int) -> None:
    with trio.fail_after(15):
        while dht.routing_table_size() != size:
            await trio.sleep(0.05)


async def test_a_peer_that_stopped_leaves_the_routing_table() -> None:
    """Field test #9: `DHT table: 5 peers` with 2 alive. A peer whose connection
    closed, and that cannot be re-dialed, must not stay in the table."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        stayer_host, stayer = await start_node(stack, nursery)
        async with trio.open_nursery() as leaver_nursery, AsyncExitStack() as leaver_stack:
            leaver_host, leaver = await start_node(leaver_stack, leaver_nursery)
            with trio.fail_after(10):
                await stayer_host.connect(info_from_p2p_addr(leaver_host.get_addrs()[0]))
            await wait_for_table(stayer, 1)
            await wait_for_table(leaver, 1)
            leaver_nursery.cancel_scope.cancel()
        await wait_for_table(stayer, 0)
        nursery.cancel_scope.cancel()


async def test_a_peer_that_only_closed_its_connection_is_redialed_and_stays_in_the_table() -> None:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (a_host, a), (b_host, _) = await start_line(stack, nursery, 2)
        await wait_for_table(a, 1)
        await a_host.disconnect(b_host.get_id())
        with trio.fail_after(15):
            while b_host.get_id() not in a_host.get_connected_peers():
                await trio.sleep(0.05)
        assert a.routing_table_size() == 1
        nursery.cancel_scope.cancel()


async def test_an_unreachable_peer_leaves_the_routing_table_when_a_query_to_it_fails() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (_, asker), _ = await start_line(stack, nursery, 2)
        await wait_for_table(asker, 1)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = Multiaddr(f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}")
        gone = ID.from_base58(NodeKey.generate().peer_id)
        assert await asker._kad.routing_table.add_peer(PeerInfo(gone, [closed]))
        assert asker.routing_table_size() == 2
        with trio.fail_after(20):
            assert await asker.find_providers(key) == []
        assert asker.routing_table_size() == 1, "the live peer stays, the gone one left"
        nursery.cancel_scope.cancel()


async def test_a_provider_record_held_by_others_carries_the_relay_circuit_announced() -> None:
    """py-libp2p's ADD_PROVIDER carries ``host.get_addrs()``, which cannot hold a
    circuit: a downloader finding a provider behind NAT could only try its own relays."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    relay = ID.from_base58(NodeKey.generate().peer_id)
    circuit = Multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit")
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (first, first_dht), (_, holder) = await start_line(stack, nursery, 2)
        direct = first.get_transport_addrs()[0]
        with trio.fail_after(20):
            assert await first_dht.provide(key, [direct, circuit]) == 1
        [record] = holder._kad.provider_store.get_providers(key)
        assert record.peer_id == first.get_id()
        assert set(record.addrs) == {direct, circuit}
        nursery.cancel_scope.cancel()


async def test_connections_closing_after_the_dht_stopped_log_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Field test: stopping a daemon with peers connected printed the routing-table
    feeder's tracebacks (its nursery had closed). Once Dht.run has ended its notifee is
    gone, and the connections that close afterwards log no error."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        stopper_host = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        other_host, other = await start_node(stack, nursery)
        swarm = stopper_host.get_network()
        assert isinstance(swarm, Swarm)
        notifees_before = len(swarm.notifees)
        async with trio.open_nursery() as dht_nursery:
            stopper = Dht(stopper_host, HandlerGuard(stopper_host, HandlerLimits()), 100)
            await dht_nursery.start(stopper.run)
            with trio.fail_after(10):
                await stopper_host.connect(info_from_p2p_addr(other_host.get_addrs()[0]))
            await wait_for_table(stopper, 1)
            await wait_for_table(other, 1)
            dht_nursery.cancel_scope.cancel()
        assert len(swarm.notifees) == notifees_before
        with caplog.at_level(logging.DEBUG):
            with trio.fail_after(10):
                await stopper_host.disconnect(other_host.get_id())
                # A connection opening after the stop must not reach the feeder either.
                await stopper_host.connect(info_from_p2p_addr(other_host.get_addrs()[0]))
                await stopper_host.disconnect(other_host.get_id())
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert errors == []
        nursery.cancel_scope.cancel()


async def test_an_unspecified_address_in_a_provider_record_is_never_learnt() -> None:
    """Older nodes announce their 0.0.0.0 listen address; dialing it reaches the finder's
    own machine, so `find` must not show it nor the peer store keep it."""
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        (provider, provider_dht), _, (finder, finder_dht) = await start_line(stack, nursery, 3)
        wildcard = Multiaddr("/ip4/0.0.0.0/tcp/4001")
        real = provider.get_transport_addrs()[0]
        with trio.fail_after(20):
            assert await provider_dht.provide(key, [wildcard, real]) >= 1
            [found] = await finder_dht.find_providers(key)
        assert found.addrs == (str(real),)
        assert wildcard not in finder.get_peerstore().addrs(provider.get_id())
        nursery.cancel_scope.cancel()
