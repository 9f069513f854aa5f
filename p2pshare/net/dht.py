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
* the ADD_PROVIDER it sends carries ``host.get_addrs()``, which cannot hold a relay
  circuit (it cuts every address at its first ``/p2p/``) -> ours carries the
  addresses the node announces, circuits included, so a downloader reaches a
  provider behind NAT through the provider's relay, not only through its own;
* its stream handler is not rate limited per peer -> ours sits in front;
* its routing table keeps a peer that stopped answering for an hour or more (it
  pings only peers unseen that long, five per five minutes) -> a peer is removed
  when its last connection closes and a re-dial fails, or when a query to it
  fails while no connection to it is up.

Keys are raw multihash bytes (the content ID's multihash), the standard
provider-record key of /ipfs/kad/1.0.0, so other libp2p implementations find our
providers and we theirs.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar, cast

import trio
from libp2p.kad_dht import DHTMode
from libp2p.kad_dht.common import ALPHA, MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from p2pshare.errors import UserError
from p2pshare.metrics import METRICS, counted_provide, timed_lookup
from p2pshare.net.addrs import is_wildcard
from p2pshare.net.peers import connect
from p2pshare.net.records import VerifiedRecords
from p2pshare.net.routing import IdleBoundStream, RoutingFeeder, ServingKadDHT, forget
from p2pshare.net.streams import LibP2PStream
from p2pshare.net.walks import (
    K_CLOSEST,
    ClosestWalk,
    LookupTrace,
    ProviderLookup,
    Walk,
    key_in_range,
)
from p2pshare.proto.ratelimit import PerKeyBuckets

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

    from libp2p.abc import IHost, INetStream

    from p2pshare.net.streams import HandlerGuard

log = logging.getLogger(__name__)
QUERY_TIMEOUT = 10.0
# A closest-peers walk asks three peers at a time (the Kademlia paper's alpha), not ten
# as a find does: nobody waits for it (a provide's record is already with the peers
# known; a refresh serves later lookups), and with ten out at once more of them go to
# peers that closer ones then push out of the 20 closest.  py-libp2p's bound on one
# walk, 30 s, is kept.
WALK_ALPHA = 3
WALK_TIMEOUT = 30.0
_R = TypeVar("_R")
_Args = ParamSpec("_Args")
PEER_ADDR_TTL = 3600
# The 10-per-10-s default drops re-provides of a node with more than ten shares.
PROVIDER_RATE_MAX = 10_000
# DHT streams served at once for one peer: py-libp2p serves 12 in all, so one peer
# holding silent streams open could otherwise take every slot.
KAD_STREAMS_PER_PEER = 3


@dataclass(frozen=True)
class Provider:
    peer_id: str
    addrs: tuple[str, ...]


async def get_providers_and_closers(
    host: IHost, records: VerifiedRecords, peer: ID, key: bytes
) -> tuple[list[PeerInfo], list[ID]]:
    """One GET_PROVIDERS request: the providers ``peer`` knows and the closer peers it names.

    py-libp2p's own version drops the closer peers' addresses, so an iterative lookup
    could not dial any peer it learned of ("No known addresses to peer"): it only ever
    reached peers it knew before. Here their addresses go into the peerstore, as
    py-libp2p does for FIND_NODE answers.
    """
    response = await _request(
        host, records, peer, Message.MessageType.GET_PROVIDERS, key, METRICS.dht_message
    )
    if response is None:
        return [], []
    providers = [
        PeerInfo(ID(entry.id), _multiaddrs(entry.addrs))
        for entry in response.providerPeers
        if _signed(host, records, entry)
    ]
    return providers, _closer_peers(host, records, response)


async def find_node(
    host: IHost, records: VerifiedRecords, peer: ID, key: bytes, count: Callable[[int], None]
) -> list[ID]:
    """One FIND_NODE request: the peers closer to ``key`` that ``peer`` names, their
    addresses learnt; ``count`` is given the bytes of the request and its answer."""
    response = await _request(host, records, peer, Message.MessageType.FIND_NODE, key, count)
    return [] if response is None else _closer_peers(host, records, response)


async def _request(
    host: IHost,
    records: VerifiedRecords,
    peer: ID,
    kind: Message.MessageType,
    key: bytes,
    count: Callable[[int], None],
) -> Message | None:
    """One request of ``kind`` about ``key`` to ``peer``, and its answer; None for an
    answer of another kind or signed by another peer."""
    # Dialed here, not by new_stream: py-libp2p would try one, possibly stale, address.
    await connect(host, PeerInfo(peer, []), QUERY_TIMEOUT)
    async with kad_stream(host, peer) as stream:
        request = Message()
        request.type = kind
        request.key = key
        request.senderRecord, _ = env_to_send_in_RPC(host)
        await stream.write(encode_varint_prefixed(request.SerializeToString()))
        answer = await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
    count(request.ByteSize() + len(answer))
    response = Message()
    response.ParseFromString(answer)
    if response.type != kind:
        return None
    if response.HasField("senderRecord") and not records.consume(host, response.senderRecord, peer):
        return None
    return response


def _signed(host: IHost, records: VerifiedRecords, entry: Message.Peer) -> bool:
    """Whether a peer an answer names comes with no signed record or a valid one of its own."""
    return not entry.HasField("signedRecord") or records.consume(
        host, entry.signedRecord, ID(entry.id)
    )


def _closer_peers(host: IHost, records: VerifiedRecords, response: Message) -> list[ID]:
    peerstore = host.get_peerstore()
    closer = []
    for entry in response.closerPeers:
        if not entry.id or not _signed(host, records, entry):
            continue
        named = ID(entry.id)
        if named == host.get_id():
            continue
        if addrs := _multiaddrs(entry.addrs):
            peerstore.add_addrs(named, addrs, PEER_ADDR_TTL)
        closer.append(named)
    return closer


async def send_add_provider(host: IHost, peer: ID, key: bytes, addrs: Sequence[Multiaddr]) -> bool:
    """One ADD_PROVIDER to ``peer``: this node provides ``key`` at ``addrs``; whether
    it was written (the protocol has no acknowledgement: Kubo sends none).

    py-libp2p's own sends ``host.get_addrs()``, which would turn the relay circuit
    ``<relay>/p2p/<relay ID>/p2p-circuit`` into "this node at the relay's address".
    """
    request = Message()
    request.type = Message.MessageType.ADD_PROVIDER
    request.key = key
    envelope, _ = env_to_send_in_RPC(host)
    request.senderRecord = envelope
    provider = request.providerPeers.add()
    provider.id = host.get_id().to_bytes()
    provider.addrs.extend(addr.to_bytes() for addr in addrs)
    provider.signedRecord = envelope
    try:
        async with kad_stream(host, peer) as stream:
            await stream.write(encode_varint_prefixed(request.SerializeToString()))
            METRICS.provide_message(request.ByteSize())
    except Exception as exc:  # noqa: BLE001 - libp2p reports refusals with many types
        log.debug("ADD_PROVIDER to %s failed: %s", peer, exc)
        return False
    return True


@asynccontextmanager
async def kad_stream(host: IHost, peer: ID) -> AsyncIterator[INetStream]:
    """A DHT stream to ``peer`` that this node closes, however its request ends.

    A DHT server (py-libp2p's, so ours) serves a stream until the asker closes it, in
    one of 12 slots shared by all peers.  A request cancelled (its lookup had found
    enough) left its stream open and the slot held: after 12 of them the node reset
    every DHT request from anyone (docs/discovery.md).  Closed, not reset: the server
    then ends the stream quietly instead of logging a warning for the reset.  The
    stream is opened shielded too: py-libp2p's own reset of a stream whose
    negotiation was cancelled never goes out.
    """
    with trio.CancelScope(shield=True), trio.fail_after(QUERY_TIMEOUT):
        raw = await host.new_stream(peer, [KAD_PROTOCOL])
    try:
        yield raw
    finally:
        await LibP2PStream(raw).aclose()


def _multiaddrs(raw: Iterable[bytes]) -> list[Multiaddr]:
    addrs = []
    for item in raw:
        try:
            addrs.append(Multiaddr(item))
        except Exception as exc:  # noqa: BLE001 - a peer's bad address is skipped
            log.debug("unparsable address in a DHT answer skipped: %s", exc)
    return addrs


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


class Dht:
    """Provider records on the standard Kademlia DHT."""

    def __init__(self, host: IHost, guard: HandlerGuard, requests_per_second: float) -> None:
        self._host = host
        self._kad = ServingKadDHT(host, DHTMode.SERVER)
        self._kad._provider_rate_max = PROVIDER_RATE_MAX  # noqa: SLF001 - no public setter
        self._records = VerifiedRecords()
        self._limits = PerKeyBuckets(rate=requests_per_second, burst=4 * requests_per_second)
        # Where a lookup's queries run (see find_providers); set while ``run`` runs.
        self._queries: trio.Nursery | None = None
        guard.register(str(KAD_PROTOCOL), self._limited_handler, per_peer=KAD_STREAMS_PER_PEER)
        logging.getLogger("libp2p.kad_dht.kad_dht").addFilter(_DropCleanEOF())

    async def _limited_handler(self, stream: LibP2PStream) -> None:
        if not self._limits.take(stream.peer_id, trio.current_time()):
            log.debug("DHT requests from %s over the rate limit; stream reset", stream.peer_id)
            await stream.reset()
            return
        await self._kad.handle_stream(cast("INetStream", IdleBoundStream(stream.raw)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed the routing table from connections and ping stale peers until cancelled.

        KadDHT's own service is not started: its loop refreshes the routing table the
        moment it starts, which dials the closest peers of a node that has only just
        joined. Discovery calls :meth:`maintain` on its own schedule instead.
        """
        network = self._host.get_network()
        async with trio.open_nursery() as nursery:
            self._queries = nursery
            feeder = RoutingFeeder(self._host, self._kad, nursery)
            network.register_notifee(feeder)
            try:
                for peer in self._host.get_connected_peers():
                    nursery.start_soon(self._kad.add_peer, peer)
                self._kad.routing_table.start_periodic_refresh(nursery)
                task_status.started()
                await trio.sleep_forever()
            finally:
                feeder.closed = True
                network.remove_notifee(feeder)

    async def maintain(self) -> None:
        """Refresh the routing table and drop expired records.

        As py-libp2p's refresh (and the libp2p spec): a walk to this node's own ID,
        then one to a random key in each bucket that holds a peer; the walks are ours
        (:meth:`closest_peers`), and each bucket's key is really in its range.
        """
        await self.find_neighbours()
        for bucket in list(self._kad.routing_table.buckets):
            if bucket.size() > 0:
                key = key_in_range(bucket.min_range, bucket.max_range)
                await self.closest_peers(key, METRICS.routing_message)
        self._kad.provider_store.cleanup_expired()
        self._kad.value_store.cleanup_expired()

    async def find_neighbours(self) -> None:
        """Look up this node's own ID, as a Kademlia node does when it joins: the
        routing table learns the peers closest to this node, and they learn of it (a
        query connects, and a connection adds the peer to both tables)."""
        await self.closest_peers(self._host.get_id().to_bytes(), METRICS.routing_message)

    async def closest_peers(self, key: bytes, count: Callable[[int], None]) -> list[ID]:
        """The ``K_CLOSEST`` peers closest to ``key`` that answered a FIND_NODE walk
        (:class:`ClosestWalk`); ``count`` is given the bytes of each request and answer.
        """
        me = self._host.get_id()
        known = set(self._kad.routing_table.find_local_closest_peers(key, K_CLOSEST))
        if len(known) < K_CLOSEST:
            known.update(self._host.get_connected_peers())
        walk = ClosestWalk(key, me, known)

        async def query(peer: ID) -> None:
            walk.answer(peer, await self._ask(peer, "FIND_NODE", find_node, key, count))

        await self._walk(walk, query, WALK_ALPHA, trio.current_time() + WALK_TIMEOUT)
        return walk.closest()

    async def add_peer(self, peer_id: ID) -> bool:
        return bool(await self._kad.add_peer(peer_id))

    def routing_table_size(self) -> int:
        return int(self._kad.routing_table.size())

    @counted_provide
    async def provide(
        self,
        key: bytes,
        announce: list[Multiaddr],
        on_known_sent: Callable[[int], None] | None = None,
    ) -> int:
        """Store a provider record for ``key`` on the closest peers; return how many took it.

        "Took it" means the ADD_PROVIDER message was written to the peer's stream: the
        protocol has no acknowledgement (go-libp2p and Kubo send none either).
        ``on_known_sent`` gets the count so far once the peers already known have it,
        before the network lookup for closer ones.
        """
        store = self._kad.provider_store
        store.add_provider(key, PeerInfo(self._host.get_id(), announce))
        me = self._host.get_id()
        accepted: set[ID] = set()
        tried: set[ID] = {me}
        limiter = trio.Semaphore(ALPHA)

        async def send(peer: ID) -> None:
            async with limiter:
                with trio.move_on_after(QUERY_TIMEOUT):
                    try:
                        await connect(self._host, PeerInfo(peer, []), QUERY_TIMEOUT)
                    except UserError as exc:
                        log.debug("not providing to %s: %s", peer, exc)
                        forget(self._kad, peer, str(exc))
                        return
                    if await send_add_provider(self._host, peer, key, announce):
                        accepted.add(peer)

        async def send_all(peers: list[ID]) -> None:
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    if peer not in tried:
                        tried.add(peer)
                        nursery.start_soon(send, peer)

        # First to the closest peers this node already knows: no lookup, so the record
        # is out within a round trip. The network lookup below dials peers it has not
        # met; on a busy network it took over 30 s, and a share was not findable until
        # it ended (bench/dht.py, 50 nodes; docs/benchmarks.md).
        await send_all(self._kad.routing_table.find_local_closest_peers(key, K_CLOSEST))
        if on_known_sent is not None:
            on_known_sent(len(accepted))
        # Then to the closest in the whole network, skipping those already sent to.
        await send_all(await self.closest_peers(key, METRICS.provide_message))
        return len(accepted)

    @timed_lookup(trio.current_time)
    async def find_providers(
        self,
        key: bytes,
        limit: int = 20,
        trace: LookupTrace | None = None,
        want: int = 1,
        give_up_at: float = math.inf,
        ask: Iterable[ID] = (),
    ) -> list[Provider]:
        """Ask the network (never only the local cache) who provides ``key``; one entry per peer.

        One iterative GET_PROVIDERS lookup: the closest known peers are asked, ALPHA
        queries at a time, their answers name closer peers, and the lookup ends once
        ``want`` providers are known, or once every peer known has answered.
        (py-libp2p runs a full FIND_NODE lookup first and then keeps asking until it
        has 20 providers, i.e. the whole network when there is only one.)
        ``trace``, if given, is updated as the lookup goes.  At ``give_up_at`` (trio
        time) the queries still out are abandoned and what was found is returned.
        The peers in ``ask`` are asked too, whether or not the routing table has them.
        """
        trace = trace if trace is not None else LookupTrace()
        me = self._host.get_id()
        known = set(self._kad.routing_table.find_local_closest_peers(key, K_CLOSEST))
        known.update(self._host.get_connected_peers())
        known.update(ask)
        known.discard(me)
        lookup = ProviderLookup(key, me, known, trace, want)

        async def query(peer: ID) -> None:
            answer = await self._ask(peer, "GET_PROVIDERS", get_providers_and_closers, key)
            lookup.answer(peer, *(answer or ([], [])))

        trace.timed_out = await self._walk(lookup, query, ALPHA, give_up_at)
        # This node's own records are added only now, so they never end the lookup: a
        # downloader that held the seeder's record (the seeder provides to the peers it
        # knows) asked no one else, and of a crowd of 100 a quarter fetched everything
        # from the seeder alone.
        for info in self._kad.provider_store.get_providers(key):
            lookup.found.setdefault(info.peer_id, set()).update(info.addrs)
        return _at_most(self._as_providers(lookup.found), limit)

    def _running_queries(self) -> trio.Nursery:
        if self._queries is None:
            raise RuntimeError("a lookup needs the DHT running (Dht.run)")
        return self._queries

    async def _walk(
        self, walk: Walk, ask: Callable[[ID], Awaitable[None]], alpha: int, give_up_at: float
    ) -> bool:
        """Ask the peers ``walk`` names, ``alpha`` at a time, until it has enough or has
        no one left to ask; whether it was cut short at ``give_up_at`` (trio time).

        A sliding window: each answer starts the next query at once.  In lock-step
        rounds one slow peer held up its whole round for the query timeout, which is
        also find's default timeout; on a busy 50-node network finds timed out that way
        (bench/dht.py; docs/benchmarks.md).  Queries run in the DHT's own nursery: once
        the walk has enough, those still out finish there (each within QUERY_TIMEOUT)
        instead of being cancelled, so the walk returns at once and no request is cut
        off part way (see kad_stream).
        """
        queries = self._running_queries()
        answered, answers = trio.open_memory_channel[None](math.inf)

        async def query(peer: ID) -> None:
            await ask(peer)
            with suppress(trio.BrokenResourceError):  # the walk is over
                answered.send_nowait(None)

        in_flight = 0
        with answers, trio.move_on_at(give_up_at) as deadline:
            while not walk.enough():
                while in_flight < alpha and (peer := walk.next_peer()) is not None:
                    in_flight += 1
                    queries.start_soon(query, peer)
                if in_flight == 0:
                    break
                await answers.receive()
                in_flight -= 1
        return deadline.cancelled_caught

    async def _ask(
        self,
        peer: ID,
        what: str,
        request: Callable[Concatenate[IHost, VerifiedRecords, ID, _Args], Awaitable[_R]],
        *args: _Args.args,
        **kwargs: _Args.kwargs,
    ) -> _R | None:
        """One query of a walk; None when it failed or went unanswered.

        Then, if no connection to ``peer`` is up either, it is gone and leaves the
        routing table (with one up, the failure was of that request, not of the peer).
        """
        why = "no answer in time"
        with trio.move_on_after(QUERY_TIMEOUT):
            try:
                return await request(self._host, self._records, peer, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - one bad peer must not end the walk
                log.debug("%s to %s failed: %s", what, peer, exc)
                why = str(exc)
        if peer not in self._host.get_connected_peers():
            forget(self._kad, peer, why)
        return None

    def _as_providers(self, found: dict[ID, set[Multiaddr]]) -> list[Provider]:
        """One entry per peer but this node; their addresses kept for dialing them."""
        me = self._host.get_id()
        peerstore = self._host.get_peerstore()
        providers = []
        for peer, found_addrs in found.items():
            if peer == me:
                continue
            # An unspecified address names no node (the peer store drops it too).
            addrs = {a for a in found_addrs if not is_wildcard(a)}
            if addrs:
                peerstore.add_addrs(peer, list(addrs), 3600)
            suffix = f"/p2p/{peer}"
            texts = {str(a).removesuffix(suffix) for a in addrs}
            providers.append(Provider(str(peer), tuple(sorted(texts))))
        return providers


def _at_most(providers: list[Provider], limit: int) -> list[Provider]:
    """A node answers with every provider it stores, in the order it learnt them: the
    first ``limit`` would send every downloader of a popular share to the same few
    peers (bench/downloaders.py), so a random ``limit`` of them are returned."""
    return providers if len(providers) <= limit else random.sample(providers, limit)
