"""The DHT facade: py-libp2p's Kademlia in server mode, with the gaps filled.

What py-libp2p 0.8.1 leaves to us (measured in ../shared/notes/py-libp2p-0.8.1.md
and a probe of this version):

* the routing table is not fed from connections -> a notifee adds every peer;
* ``provide`` reports only "sent to at least one peer" -> we send ADD_PROVIDER
  ourselves and count the peers the record was written to;
* ``find_providers`` stops at the local cache and returns duplicates -> we run
  the network lookup every time and merge the answers per peer;
* ADD_PROVIDER from one peer is capped at 10 per 10 s, silently -> raised, since
  a node re-providing its shares sends one per share;
* its stream handler is not rate limited per peer -> ours sits in front.

Keys are raw multihash bytes (the content ID's multihash), the standard
provider-record key of /ipfs/kad/1.0.0, so other libp2p implementations find our
providers and we theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INotifee
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.common import ALPHA
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo

from p2pshare.proto.ratelimit import PerKeyBuckets

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetConn, INetStream, INetwork
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

    from p2pshare.net.streams import HandlerGuard, LibP2PStream

log = logging.getLogger(__name__)
PEER_FEED_TIMEOUT = 5.0
QUERY_TIMEOUT = 10.0
K_CLOSEST = 20
# The 10-per-10-s default drops re-provides of a node with more than ten shares.
PROVIDER_RATE_MAX = 10_000


@dataclass(frozen=True)
class Provider:
    peer_id: str
    addrs: tuple[str, ...]


class _DropCleanEOF(logging.Filter):
    """kad_dht logs a WARNING each time a client half-closes after its last request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Failed to read DHT message")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and isinstance(record.args[0], StreamEOF)
        )


class _RoutingFeeder(INotifee):
    """Adds every connected peer to the routing table."""

    def __init__(self, dht: KadDHT, nursery: trio.Nursery) -> None:
        self._dht = dht
        self._nursery = nursery

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        # Awaited inline while the connection is being set up: hand the work off.
        self._nursery.start_soon(self._add, conn.muxed_conn.peer_id)

    async def _add(self, peer_id: ID) -> None:
        # The listening side learns the dialer's addresses only once identify is done.
        with trio.move_on_after(PEER_FEED_TIMEOUT):
            while not await self._dht.add_peer(peer_id):
                await trio.sleep(0.05)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return


class Dht:
    """Provider records on the standard Kademlia DHT."""

    def __init__(self, host: IHost, guard: HandlerGuard, requests_per_second: float) -> None:
        self._host = host
        self._kad = KadDHT(host, DHTMode.SERVER)
        self._kad._provider_rate_max = PROVIDER_RATE_MAX  # noqa: SLF001 - no public setter
        self._limits = PerKeyBuckets(rate=requests_per_second, burst=4 * requests_per_second)
        guard.register(str(KAD_PROTOCOL), self._limited_handler)
        logging.getLogger("libp2p.kad_dht.kad_dht").addFilter(_DropCleanEOF())

    async def _limited_handler(self, stream: LibP2PStream) -> None:
        if not self._limits.take(stream.peer_id, trio.current_time()):
            log.debug("DHT requests from %s over the rate limit; stream reset", stream.peer_id)
            await stream.reset()
            return
        await self._kad.handle_stream(stream.raw)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed the routing table from connections and ping stale peers until cancelled.

        KadDHT's own service is not started: its loop refreshes the routing table the
        moment it starts, which dials the closest peers of a node that has only just
        joined. Discovery calls :meth:`maintain` on its own schedule instead.
        """
        async with trio.open_nursery() as nursery:
            self._host.get_network().register_notifee(_RoutingFeeder(self._kad, nursery))
            for peer in self._host.get_connected_peers():
                nursery.start_soon(self._kad.add_peer, peer)
            self._kad.routing_table.start_periodic_refresh(nursery)
            task_status.started()
            await trio.sleep_forever()

    async def maintain(self) -> None:
        """Refresh the routing table and drop expired records."""
        await self._kad.refresh_routing_table()
        self._kad.provider_store.cleanup_expired()
        self._kad.value_store.cleanup_expired()

    async def add_peer(self, peer_id: ID) -> bool:
        return bool(await self._kad.add_peer(peer_id))

    def routing_table_size(self) -> int:
        return int(self._kad.routing_table.size())

    async def provide(self, key: bytes, announce: list[Multiaddr]) -> int:
        """Store a provider record for ``key`` on the closest peers; return how many took it.

        "Took it" means the ADD_PROVIDER message was written to the peer's stream: the
        protocol has no acknowledgement (go-libp2p and Kubo send none either).
        """
        store = self._kad.provider_store
        store.add_provider(key, PeerInfo(self._host.get_id(), announce))
        closest = await self._kad.peer_routing.find_closest_peers_network(key)
        me = self._host.get_id()
        accepted = 0
        limiter = trio.Semaphore(ALPHA)

        async def send(peer: ID) -> None:
            nonlocal accepted
            async with limiter:
                with trio.move_on_after(QUERY_TIMEOUT):
                    if await store._send_add_provider(peer, key):  # noqa: SLF001
                        accepted += 1

        async with trio.open_nursery() as nursery:
            for peer in closest:
                if peer != me:
                    nursery.start_soon(send, peer)
        return accepted

    async def find_providers(self, key: bytes, limit: int = 20) -> list[Provider]:
        """Ask the network (never only the local cache) who provides ``key``; one entry per peer.

        One iterative GET_PROVIDERS lookup: the closest known peers are asked ALPHA at a
        time, their answers name closer peers, and the lookup ends at the first round
        that yields providers, or once every peer known has answered.
        (py-libp2p runs a full FIND_NODE lookup first and then keeps asking until it
        has 20 providers, i.e. the whole network when there is only one.)
        """
        store = self._kad.provider_store
        me = self._host.get_id()
        found: dict[ID, set[Multiaddr]] = {}
        for info in store.get_providers(key):
            found.setdefault(info.peer_id, set()).update(info.addrs)
        known = set(self._kad.routing_table.find_local_closest_peers(key, K_CLOSEST))
        known.update(self._host.get_connected_peers())
        known.discard(me)
        queried: set[ID] = set()

        async def ask(peer: ID, closer: list[ID]) -> None:
            with trio.move_on_after(QUERY_TIMEOUT):
                try:
                    infos, more = await store._get_providers_from_peer_with_closers(  # noqa: SLF001
                        peer, key
                    )
                except Exception as exc:  # noqa: BLE001 - one bad peer must not end the lookup
                    log.debug("GET_PROVIDERS to %s failed: %s", peer, exc)
                    return
                for info in infos:
                    found.setdefault(info.peer_id, set()).update(info.addrs)
                closer.extend(more)

        window = K_CLOSEST
        while not found.keys() - {me}:
            nearest = sort_peer_ids_by_distance(key, list(known))[:window]
            batch = [p for p in nearest if p not in queried][:ALPHA]
            if not batch:
                if window >= len(known):
                    break
                # The K closest we know of have no record: routing tables still
                # disagree (a young network); widen to every peer known, still ALPHA
                # at a time and bounded by the caller's timeout.
                window = len(known)
                continue
            queried.update(batch)
            closer: list[ID] = []
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer, closer)
            known.update(p for p in closer if p != me)
        peerstore = self._host.get_peerstore()
        providers = []
        for peer, addrs in found.items():
            if peer == me:
                continue
            if addrs:
                peerstore.add_addrs(peer, list(addrs), 3600)
            suffix = f"/p2p/{peer}"
            texts = {str(a).removesuffix(suffix) for a in addrs}
            providers.append(Provider(str(peer), tuple(sorted(texts))))
        return providers[:limit]
