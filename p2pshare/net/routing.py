"""The DHT's routing table: fed from every connection, rid of peers that are gone, and
never waited on by a request.

py-libp2p fills its routing table only from its own lookups, keeps a silent peer for an
hour or more, and adds an asking peer before it reads the request; see
docs/discovery.md for what each of these did to p2pshare and the tests that show it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import INotifee
from libp2p.kad_dht import KadDHT
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError

from p2pshare.errors import UserError
from p2pshare.net.peers import connect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from libp2p.abc import IHost, INetConn, INetStream, INetwork
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

log = logging.getLogger(__name__)
PEER_FEED_TIMEOUT = 5.0
# Seconds a DHT stream may stay silent before its handler takes that as the asker's
# last request; go-libp2p-kad-dht allows a minute, but that is 1 of 12 slots held.
KAD_IDLE_LIMIT = 10.0
# A peer whose last connection closed is dialed once more within this long
# (seconds); if that fails, it leaves the routing table.
REDIAL_TIMEOUT = 5.0


async def forget_if_unreachable(host: IHost, kad: KadDHT, peer: ID, timeout: float) -> bool:
    """Dial ``peer`` unless a connection is up; on failure remove it from the routing
    table (True), so lookups and ``status`` stop counting a peer that is gone."""
    try:
        await connect(host, PeerInfo(peer, []), timeout)
    except UserError as exc:
        return forget(kad, peer, str(exc))
    return False


def _has_addrs(host: IHost, peer: ID) -> bool:
    try:
        return bool(host.get_peerstore().addrs(peer))
    except PeerStoreError:  # not met yet
        return False


def forget(kad: KadDHT, peer: ID, why: str) -> bool:
    if not kad.routing_table.remove_peer(peer):
        return False
    log.debug("%s left the DHT routing table: %s", peer, why)
    return True


class RoutingFeeder(INotifee):
    """Adds every connected peer to the routing table, and removes one that cannot
    be re-dialed once its last connection closed.

    Its work runs in the DHT's nursery; once that is closing (the daemon stops with
    peers connected, each connection closing notifies) it does nothing: the swarm
    may already have started a call before the feeder was unregistered.
    """

    def __init__(self, host: IHost, dht: KadDHT, nursery: trio.Nursery) -> None:
        self._host = host
        self._dht = dht
        self._nursery = nursery
        self.closed = False

    def _start(self, job: Callable[[ID], Awaitable[None]], peer_id: ID) -> None:
        if not self.closed:
            self._nursery.start_soon(job, peer_id)

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        # Awaited inline while the connection is being set up: hand the work off.
        self._start(self._add, conn.muxed_conn.peer_id)

    async def _add(self, peer_id: ID) -> None:
        """Add the peer once its addresses are known: the listening side learns the
        dialer's only once identify is done.  Tried once: when the peer's bucket is
        full, py-libp2p pings the bucket's oldest peer and keeps it if it answers, and
        asking again every 50 ms pinged it up to 100 times per new connection."""
        with trio.move_on_after(PEER_FEED_TIMEOUT):
            while not _has_addrs(self._host, peer_id):
                await trio.sleep(0.05)
            await self._dht.add_peer(peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._start(self._check, conn.muxed_conn.peer_id)

    async def _check(self, peer_id: ID) -> None:
        if self._dht.routing_table.peer_in_table(peer_id):
            await forget_if_unreachable(self._host, self._dht, peer_id, REDIAL_TIMEOUT)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return


class ServingKadDHT(KadDHT):
    """py-libp2p's DHT, whose request handler never waits on the routing table.

    Before reading a request, py-libp2p's handler adds the asking peer to the routing
    table, and when the peer's bucket is full that pings the bucket's oldest peer (with
    no time limit), all while holding one of the 12 handler slots; with all 12 taken
    every further request is reset.  A seeder with 100 downloaders connected reset
    448 of 474 of their GET_PROVIDERS in one run, and about half of them never learnt
    of another provider (bench/downloaders.py).  Here the handler only marks a peer
    already in the table as seen: RoutingFeeder adds every connected peer, outside the
    handler.
    """

    async def add_peer(self, peer_id: ID, *, skip_server_mode_check: bool = False) -> bool:
        if not skip_server_mode_check:
            return await super().add_peer(peer_id)
        # Only the request handler skips the check (the peer asked us over KAD).
        return self.routing_table.find_bucket(peer_id).refresh_peer_last_seen(peer_id)


class IdleBoundStream:
    """A DHT stream as py-libp2p's request handler reads it: silence for
    KAD_IDLE_LIMIT seconds reads as the end of the stream.

    The handler serves a stream until the asker closes it, in one of 12 slots shared by
    every peer, so an asker that went quiet without closing (a request of py-libp2p's
    own lookups that was cancelled) held a slot until the handler's time bound.
    """

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream

    async def read(self, n: int | None = None) -> bytes:
        with trio.move_on_after(KAD_IDLE_LIMIT):
            return await self._stream.read(n)
        log.debug("DHT stream from %s silent; ending it", self._stream.muxed_conn.peer_id)
        return b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
