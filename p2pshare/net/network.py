"""The node's network: the one object through which the layers above reach libp2p.

Its edge speaks plain values -- peer IDs and multiaddrs as strings,
:class:`~p2pshare.net.peers.PeerAddrs`, :class:`~p2pshare.net.dht.Provider` -- and
our own stream wrappers, so nothing above ``p2pshare.net`` imports libp2p or
multiaddr (tests/test_layers.py), and the node services can be tested with a fake.

A :class:`Network` owns the libp2p host, the :class:`HandlerGuard` every inbound
protocol is registered through, and the DHT; it builds the data-channel server
and the mDNS announcer on the host.  :func:`running_network` starts one.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2pshare.net.addrs import announce_addrs, is_loopback, local_addrs, observed_addrs
from p2pshare.net.datachannel import DataChannelLimits, DataChannelServer, open_data_channel
from p2pshare.net.dht import Dht
from p2pshare.net.host import running_host
from p2pshare.net.mapped import MappedAddrs
from p2pshare.net.mdns import Mdns
from p2pshare.net.peers import (
    PeerAddrs,
    connect,
    connect_exactly,
    connected_peers,
    on_connected,
    open_stream,
    peer_info,
    ping_ms,
)
from p2pshare.net.reachability import Reachability
from p2pshare.net.relay import Relays, circuit_addrs, connection_path
from p2pshare.net.streams import HandlerGuard, HandlerLimits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from libp2p.abc import IHost

    from p2pshare.identity import NodeKey
    from p2pshare.net.dht import Provider
    from p2pshare.net.encrypted_stream import EncryptedStream
    from p2pshare.net.relay import RelaySettings
    from p2pshare.net.streams import ByteStream, LibP2PStream
    from p2pshare.net.walks import LookupTrace


class Network:
    """A running libp2p host, its DHT and its guarded stream handlers, in plain values."""

    def __init__(
        self,
        host: IHost,
        *,
        max_connections: int,
        streams_per_peer: int = HandlerLimits.streams_per_peer,
        dht_requests_per_second: float,
        mapped: MappedAddrs | None = None,
    ) -> None:
        self._host = host
        # As many data channels as libp2p connections: a peer refused a data channel
        # is served over its libp2p stream anyway, at several times the CPU per byte on
        # both sides (docs/benchmarks.md, "Data channels for the whole crowd").
        self._data_limits = DataChannelLimits(max_connections=max_connections)
        # Router-mapped addresses: announced by the host, judged by reachability.
        self.mapped = mapped if mapped is not None else MappedAddrs()
        self._guard = HandlerGuard(host, HandlerLimits(streams_per_peer=streams_per_peer))
        self._dht = Dht(host, self._guard, dht_requests_per_second)
        self.peer_id = str(host.get_id())

    # -- addresses

    def listen_addrs(self) -> list[str]:
        """The announced addresses with ``/p2p/<peer ID>``, as identify sends them
        (p2pshare.net.addrs)."""
        return [str(addr) for addr in self._host.get_addrs()]

    def bound_addrs(self) -> list[str]:
        """Where this node's sockets listen, with ``/p2p/<peer ID>``: the listen
        addresses made true (a wildcard as the interface addresses), not ``[network]
        announce`` and not what a router maps."""
        return [f"{addr}/p2p/{self.peer_id}" for addr in local_addrs(self._host)]

    def announce_addrs(self) -> list[str]:
        """What tickets and DHT records carry: the announced addresses, without ``/p2p/``,
        and the relay circuits this node holds (py-libp2p sends others
        ``host.get_addrs()``, which cannot hold them: it would cut ``/p2p/<relay>`` off)."""
        return [str(addr) for addr in announce_addrs(self._host) + circuit_addrs(self._host)]

    def observed_addrs(self) -> list[str]:
        return observed_addrs(self._host)

    def tcp_port(self) -> int | None:
        """The TCP port of the first IPv4 listen address not on loopback (what a router
        can forward to), or None."""
        for addr in self._host.get_transport_addrs():
            parts = str(addr).split("/")
            if (
                len(parts) >= 5
                and parts[1] == "ip4"
                and parts[3] == "tcp"
                and not is_loopback(addr)
            ):
                return int(parts[4])
        return None

    # -- peers

    def connected_peers(self) -> list[PeerAddrs]:
        return connected_peers(self._host)

    def peer_count(self) -> int:
        return len(self._host.get_connected_peers())

    def connection_count(self) -> int:
        """Open libp2p connections (a peer may have several, e.g. a relayed and a direct one)."""
        return len(self._host.get_network().get_connections())

    def is_connected(self, peer_id: str) -> bool:
        return any(str(peer) == peer_id for peer in self._host.get_connected_peers())

    async def connect(self, peer: PeerAddrs, timeout: float) -> str | None:
        """Connect to ``peer`` unless connected; the address that worked, or None if a
        connection was there (p2pshare.net.peers.connect)."""
        addr = await connect(self._host, peer_info(peer), timeout)
        return None if addr is None else str(addr)

    async def connect_exactly(self, peer: PeerAddrs, timeout: float) -> None:
        """Dial the one address of ``peer`` itself (p2pshare.net.peers.connect_exactly)."""
        info = peer_info(peer)
        await connect_exactly(self._host, info.peer_id, info.addrs[0], timeout)

    async def ping_ms(self, peer_id: str, timeout: float) -> float | None:
        return await ping_ms(self._host, peer_id, timeout)

    def connection_path(self, peer_id: str) -> str | None:
        """``direct`` or ``relayed`` for a connected peer, None when not connected."""
        return connection_path(self._host, ID.from_base58(peer_id))

    def on_connected(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(peer ID)`` whenever a connection to a peer opens, either way."""
        on_connected(self._host, callback)

    # -- streams

    def register(
        self,
        protocol: str,
        handler: Callable[[LibP2PStream], Awaitable[None]],
        *,
        bounded: bool = True,
    ) -> None:
        """Serve ``protocol`` with ``handler`` behind the HandlerGuard (p2pshare.net.streams)."""
        self._guard.register(protocol, handler, bounded=bounded)

    async def open_stream(
        self, peer_id: str, addrs: Sequence[str], protocol: str, timeout: float
    ) -> LibP2PStream:
        return await open_stream(self._host, peer_id, addrs, protocol, timeout)

    async def open_data_channel(
        self, peer_id: str, addrs: Sequence[str], *, offer_timeout: float, connect_timeout: float
    ) -> EncryptedStream:
        return await open_data_channel(
            self._host,
            peer_id,
            addrs,
            offer_timeout=offer_timeout,
            connect_timeout=connect_timeout,
        )

    def data_channel_server(
        self,
        listen_host: str,
        port: int,
        serve: Callable[[ByteStream, str], Awaitable[None]],
        *,
        refuse: Callable[[LibP2PStream], str | None] = lambda _stream: None,
        offer_port: Callable[[LibP2PStream, int], int] = lambda _stream, port: port,
    ) -> DataChannelServer:
        """The data-channel server of this host; run it with ``nursery.start(server.run)``.
        ``refuse(stream)`` names why the peer on that stream cannot reach the data port;
        ``offer_port(stream, port)`` the port that peer reaches it at."""
        return DataChannelServer(
            self._host,
            self._guard,
            listen_host,
            port,
            serve=serve,
            refuse=refuse,
            offer_port=offer_port,
            limits=self._data_limits,
        )

    # -- NAT: relays, hole punching, reachability (p2pshare.net.relay, .reachability)

    def relays(self, config: RelaySettings) -> Relays:
        """This node's relay roles; run them with ``nursery.start(relays.run)``."""
        return Relays(self._host, self._guard, config)

    def reachability(self, announce: Sequence[str], *, data_port_forwarded: bool) -> Reachability:
        """This node's AutoNAT reachability; run it with ``nursery.start(reach.run)``."""
        return Reachability(
            self._host,
            self._guard,
            announce,
            data_port_forwarded=data_port_forwarded,
            mapped=self.mapped,
        )

    # -- the DHT

    async def run_dht(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._dht.run(task_status=task_status)

    async def maintain_dht(self) -> None:
        await self._dht.maintain()

    async def find_neighbours(self) -> None:
        await self._dht.find_neighbours()

    async def add_to_routing_table(self, peer_id: str) -> bool:
        return await self._dht.add_peer(ID.from_base58(peer_id))

    def routing_table_size(self) -> int:
        return self._dht.routing_table_size()

    async def provide(
        self,
        key: bytes,
        announce: Sequence[str],
        on_known_sent: Callable[[int], None] | None = None,
    ) -> int:
        """Provide ``key`` at the addresses ``announce`` (p2pshare.net.dht.Dht.provide)."""
        addrs = [multiaddr.Multiaddr(addr) for addr in announce]
        return await self._dht.provide(key, addrs, on_known_sent)

    async def find_providers(
        self,
        key: bytes,
        *,
        limit: int = 20,
        trace: LookupTrace | None = None,
        want: int = 1,
        give_up_at: float = math.inf,
        ask: Sequence[str] = (),
    ) -> list[Provider]:
        return await self._dht.find_providers(
            key,
            limit=limit,
            trace=trace,
            want=want,
            give_up_at=give_up_at,
            ask=[ID.from_base58(peer) for peer in ask],
        )

    # -- mDNS

    async def run_mdns(self, found: trio.MemorySendChannel[PeerAddrs]) -> None:
        """Announce this node by mDNS and send every peer found to ``found`` until cancelled.

        LAN peers are told our interface addresses, not ``[network] announce``: a
        public address behind NAT is usually not reachable from inside the LAN.
        """
        mdns = Mdns(self._host.get_id(), local_addrs(self._host))
        send, receive = trio.open_memory_channel[PeerInfo](0)
        async with found, trio.open_nursery() as nursery:
            nursery.start_soon(mdns.run, send)
            async with receive:
                async for info in receive:
                    peer = PeerAddrs(str(info.peer_id), tuple(str(a) for a in info.addrs))
                    try:
                        await found.send(peer)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        # Nobody dials any more; mDNS goes on announcing this node.
                        return


@asynccontextmanager
async def running_network(
    key: NodeKey,
    listen: Sequence[str],
    *,
    max_connections: int = 300,
    announce: Sequence[str] = (),
    where: str = "[network] listen",
    streams_per_peer: int = HandlerLimits.streams_per_peer,
    dht_requests_per_second: float,
) -> AsyncIterator[Network]:
    """A host listening on every address of ``listen`` (p2pshare.net.host.running_host),
    as a :class:`Network`; stopped on exit."""
    mapped = MappedAddrs()
    async with running_host(
        key,
        listen,
        max_connections=max_connections,
        announce=announce,
        where=where,
        mapped=mapped,
    ) as host:
        yield Network(
            host,
            max_connections=max_connections,
            streams_per_peer=streams_per_peer,
            dht_requests_per_second=dht_requests_per_second,
            mapped=mapped,
        )
