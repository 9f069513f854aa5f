"""Discovery: joining the network, announcing shares, finding providers, knowing peers.

Runs in the daemon's nursery on top of :class:`p2pshare.net.network.Network` (its DHT,
dialing and mDNS), which it speaks to in peer ID and multiaddr strings:

* at start it dials the configured bootstrap peers and the peers remembered from
  the last run, then announces every share;
* it re-announces every share each ``reprovide_interval`` (well inside the 48 h
  record lifetime) and refreshes the routing table each ``refresh_interval``;
* it remembers connected peers and their addresses in the catalog, so a restarted
  daemon rejoins without help.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.errors import NoPeersError, UserError
from p2pshare.net.peers import PeerAddrs, checked_peer, parse_peer_addr
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import KnownPeer, ProvideStatus
from p2pshare.store.private import received_unseeded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from p2pshare.config import NetworkConfig
    from p2pshare.net.dht import Provider
    from p2pshare.net.network import Network
    from p2pshare.net.walks import LookupTrace
    from p2pshare.store.catalog import Catalog, ShareRow

log = logging.getLogger(__name__)
DIAL_CONCURRENCY = 16
KNOWN_PEERS_KEPT = 200
REMEMBER_INTERVAL = 60.0
PING_TIMEOUT = 5.0
FIRST_REFRESH_DELAY = 30.0
# Providers a `find` names at most (a random draw of those found).
FIND_LIMIT = 20
MDNS_BACKLOG = 64
# How long `share` waits for the peers already known to hold a new share's record.
FIRST_ANNOUNCE_WAIT = 2.0


def withheld(catalog: Catalog, cid: str) -> str | None:
    """Why ``cid`` is never announced to the DHT, as a phrase; None when it may be.

    A provider record tells anyone who asks that this node has the content, so it is
    withheld for revoked content (also when a ``get`` holds it here again) and for a
    private share only its recipients may fetch: a peer not named must learn no more
    than for content no one shares.  Those recipients fetch it with its ticket, and
    their copies are not announced either, unless they seed it.
    """
    if catalog.is_revoked(cid):
        return "revoked with unshare --revoke"
    private = catalog.private_share(cid)
    if private is not None and not private.anyone_may_seed:
        return "a private share, fetched by its recipients with its ticket"
    if private is None and received_unseeded(catalog, cid):
        return "a private share received here, announced only if this node seeds it (seed CID)"
    return None


@dataclass(frozen=True)
class JoinReport:
    attempted: int
    connected: int


class Discovery:
    """The node's place in the DHT."""

    def __init__(
        self,
        network: Network,
        catalog: Catalog,
        config: NetworkConfig,
        *,
        shares: Callable[[], Awaitable[Sequence[ShareRow]]] | None = None,
    ) -> None:
        self._network = network
        self._catalog = catalog
        self._config = config
        # What to re-announce: the daemon passes shares checked against their files, so
        # one changed on disk stops being announced.
        self._shares = shares or self._catalog_shares
        self._nursery: trio.Nursery | None = None
        # The address each peer was last reached at by dialing it, remembered first.
        self._dialed: dict[str, str] = {}
        # Shares whose last announcement reached no peer (shared before joining).
        self._unannounced: set[str] = set()
        self._reannouncing = False
        # Announcements running now, and the last one of each content that reached a
        # peer (trio time, status): a download announces its content while partial,
        # and the record (this peer, its addresses) is the same once it completes.
        self._announcing: set[str] = set()
        self._reached: dict[str, tuple[float, ProvideStatus]] = {}

    async def _catalog_shares(self) -> Sequence[ShareRow]:
        return self._catalog.shares()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._network.run_dht)
            self._network.on_connected(self._peer_connected)
            if self._config.mdns:
                self._watch_mdns(nursery)
            # Joining is bounded by connect_timeout; the daemon announces readiness
            # once it has joined, so "ready" means reachable through the network too.
            report = await self.join()
            log.info(
                "joined the network: %d of %d peers reached", report.connected, report.attempted
            )
            if report.connected:
                await self._find_neighbours()
            task_status.started()
            nursery.start_soon(self._every, self._config.reprovide_interval, self.provide_all)
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._every_after, REMEMBER_INTERVAL, self.remember_peers)
            try:
                await trio.sleep_forever()
            finally:
                self.remember_peers_now()

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await job()
            await trio.sleep(interval)

    async def _refresh_loop(self) -> None:
        # The first refresh comes soon after joining, so the routing table learns the
        # neighbourhood; not at once, so a node that just joined does not dial all of
        # it in its first second.
        await trio.sleep(min(FIRST_REFRESH_DELAY, self._config.refresh_interval))
        await self._every(self._config.refresh_interval, self._maintain)

    async def _every_after(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        await trio.sleep(interval)
        await self._every(interval, job)

    async def _maintain(self) -> None:
        try:
            await self._network.maintain_dht()
        except Exception:
            log.exception("DHT maintenance failed")

    # -- joining

    async def join(self) -> JoinReport:
        """Dial bootstrap peers and remembered peers, a few at a time."""
        targets: dict[str, PeerAddrs] = {}
        for text in self._config.bootstrap:
            try:
                info = parse_peer_addr(text)
            except Exception as exc:  # noqa: BLE001 - a bad entry must not stop the others
                log.warning("bootstrap entry %r skipped: %s", text, exc)
                continue
            targets[info.peer_id] = info
        for peer in self._catalog.known_peers():
            remembered = parse_remembered(peer)
            if remembered is not None and remembered.peer_id not in targets:
                targets[remembered.peer_id] = remembered
        targets.pop(self._network.peer_id, None)
        connected = 0
        limiter = trio.Semaphore(DIAL_CONCURRENCY)

        async def dial(info: PeerAddrs) -> None:
            nonlocal connected
            async with limiter:
                try:
                    addr = await self._network.connect(info, self._config.connect_timeout)
                except Exception as exc:  # noqa: BLE001 - unreachable peers are normal
                    log.info("could not reach %s: %s", info.peer_id, exc)
                    return
                if addr is not None:
                    self._dialed[info.peer_id] = addr
                await self._network.add_to_routing_table(info.peer_id)
                connected += 1

        async with trio.open_nursery() as nursery:
            for info in targets.values():
                nursery.start_soon(dial, info)
        return JoinReport(len(targets), connected)

    async def _find_neighbours(self) -> None:
        """Learn the peers closest to this node, and be learnt by them, before it says it
        is ready.  Knowing only its bootstrap peers, a new node's first shares reached
        those alone and its lookups asked them alone; with 50 nodes, 49 of them knew only
        the bootstrap node when the benchmark began, and the slowest new share was found
        after 49 queries (bench/dht.py; docs/benchmarks.md)."""
        with trio.move_on_after(self._config.connect_timeout):
            try:
                await self._network.find_neighbours()
            except Exception:  # the node works on without them
                log.exception("looking up this node's neighbours failed")

    async def connect(self, text: str) -> str:
        """``p2pshare connect``: dial the peer at exactly that address (even when it is
        connected through another), add it to the routing table, remember the address.
        """
        info = parse_peer_addr(text)
        if len(info.addrs) != 1:
            raise UserError(f"{text!r} names no address to dial {info.peer_id} at")
        addr = info.addrs[0]
        await self._network.connect_exactly(info, self._config.connect_timeout)
        await self._network.add_to_routing_table(info.peer_id)
        self._dialed[info.peer_id] = addr
        self._catalog.save_peers(
            [KnownPeer(info.peer_id, (addr,), int(time.time()))], KNOWN_PEERS_KEPT
        )
        return info.peer_id

    def _watch_mdns(self, nursery: trio.Nursery) -> None:
        """Announce this node by mDNS and dial the peers found that way (``[network] mdns``)."""
        found, receive = trio.open_memory_channel[PeerAddrs](MDNS_BACKLOG)
        nursery.start_soon(self._network.run_mdns, found)
        nursery.start_soon(self._dial_found, receive)

    async def _dial_found(self, found: trio.MemoryReceiveChannel[PeerAddrs]) -> None:
        """Dial each peer mDNS reports unless connected or already being dialed."""
        dialing: set[str] = set()
        limiter = trio.Semaphore(DIAL_CONCURRENCY)

        async def dial(info: PeerAddrs) -> None:
            try:
                async with limiter:
                    await self._network.connect(info, self._config.connect_timeout)
                await self._network.add_to_routing_table(info.peer_id)
                log.info("connected to %s found by mDNS", info.peer_id)
            except Exception as exc:  # noqa: BLE001 - unreachable peers are normal
                log.info("peer %s found by mDNS is unreachable: %s", info.peer_id, exc)
            finally:
                dialing.discard(info.peer_id)

        async with found, trio.open_nursery() as nursery:
            async for info in found:
                if (
                    info.peer_id == self._network.peer_id
                    or info.peer_id in dialing
                    or self._network.is_connected(info.peer_id)
                ):
                    continue
                dialing.add(info.peer_id)
                nursery.start_soon(dial, info)

    # -- remembering

    async def remember_peers(self) -> None:
        self.remember_peers_now()

    def remember_peers_now(self) -> None:
        now = int(time.time())
        peers = []
        for peer in self._network.connected_peers():
            # Older nodes announce 0.0.0.0 through identify; dialing that after a
            # restart would only fail.  The address we last reached the peer at comes
            # first: a NAT's forwarded address is not among those it announces.
            dialed = self._dialed.get(peer.peer_id)
            announced = (a for a in peer.addrs if not a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")))
            addrs = tuple(dict.fromkeys([*([dialed] if dialed else []), *announced]))
            if addrs:
                peers.append(KnownPeer(peer.peer_id, addrs, now))
        if peers:
            self._catalog.save_peers(peers, KNOWN_PEERS_KEPT)

    # -- announcing

    def announce(self) -> list[str]:
        return self._network.announce_addrs()

    async def provide(
        self, cid: str, on_known: Callable[[int], None] | None = None
    ) -> ProvideStatus:
        """Announce one share now and record the outcome.

        The status is recorded twice: once the peers already known hold the record (the
        share is findable from then on; ``on_known`` gets their count then, or the final
        count if the announcement failed first), and again after the network lookup for
        closer peers, which took over 30 s with 50 daemons on two cores
        (docs/benchmarks.md).  A share no peer took is announced again when a peer
        connects.
        """
        key = ContentId.parse(cid).multihash
        started = int(time.time())
        why = withheld(self._catalog, cid)
        if why is not None:
            # Checked at every announcement, so no path (reprovide, a peer connecting,
            # a download) announces it: the catalog says so until it is shared again.
            self._unannounced.discard(cid)
            log.info("not announcing %s: %s", cid, why)
            if on_known is not None:
                on_known(0)
            return ProvideStatus(started, 0)
        reported = False
        self._announcing.add(cid)

        def known_sent(count: int) -> None:
            nonlocal reported
            reported = True
            if count:
                self._catalog.set_provided(cid, ProvideStatus(started, count))
            if on_known is not None:
                on_known(count)

        try:
            count = await self._network.provide(key, self.announce(), known_sent)
        except Exception:
            log.exception("providing %s failed", cid)
            count = 0
        finally:
            self._announcing.discard(cid)
        if not reported and on_known is not None:
            on_known(count)
        status = ProvideStatus(started, count)
        self._catalog.set_provided(cid, status)
        if count:
            self._unannounced.discard(cid)
            self._remember_reached(cid, status)
        else:
            self._unannounced.add(cid)
        log.info("provided %s to %d peers", cid, count)
        return status

    async def announce_new(self, cid: str, wait: float = FIRST_ANNOUNCE_WAIT) -> int | None:
        """Start announcing a new share and wait, at most ``wait`` seconds, until the
        peers this node already knows hold the record: how many took it, or None if
        that took longer (the announcement goes on in the background either way).

        ``share`` returns only then, so a peer given the content ID at once finds it: a
        ``find`` that began before the record was out came back empty, and that was
        the slowest time-until-findable (bench/dht.py; docs/benchmarks.md).
        """
        if self._nursery is None:
            return None
        took: list[int] = []
        reached = trio.Event()

        def known(count: int) -> None:
            took.append(count)
            reached.set()

        self._nursery.start_soon(self.provide, cid, known)
        with trio.move_on_after(wait):
            await reached.wait()
        return took[0] if took else None

    def _peer_connected(self, _peer_id: str) -> None:
        """Announce again the shares no peer took, now that there is a peer."""
        if self._unannounced and not self._reannouncing and self._nursery is not None:
            self._reannouncing = True
            self._nursery.start_soon(self._announce_unannounced)

    async def _announce_unannounced(self) -> None:
        try:
            for cid in sorted(self._unannounced):
                row = self._catalog.share(cid)
                if row is None or row.stale_reason:
                    self._unannounced.discard(cid)
                else:
                    await self.provide(cid)
        finally:
            self._reannouncing = False

    async def provide_key(self, key: bytes) -> int:
        """Announce this node under a DHT key that names no share (e.g. compute offers)."""
        return await self._network.provide(key, self.announce())

    def provide_soon(self, cid: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.provide, cid)

    def provide_completed(self, cid: str) -> None:
        """Announce content a download just completed, unless its announcement while
        partial is still running or reached a peer within ``reprovide_interval``: that
        record is this one, and announcing it again costs a lookup and a message to
        each of the closest peers (in a crowd of downloaders, most of their DHT work).
        """
        if cid in self._announcing:
            return
        reached = self._reached.get(cid)
        if reached is None or trio.current_time() - reached[0] >= self._config.reprovide_interval:
            self.provide_soon(cid)
            return
        # The catalog has had a row for it only since the download completed.
        self._catalog.set_provided(cid, reached[1])
        self._unannounced.discard(cid)

    def _remember_reached(self, cid: str, status: ProvideStatus) -> None:
        now = trio.current_time()
        self._reached = {
            c: r for c, r in self._reached.items() if now - r[0] < self._config.reprovide_interval
        }
        self._reached[cid] = (now, status)

    def addresses_changed(self) -> None:
        """Announce every share again, so provider records carry the new addresses
        (e.g. a router mapping made or refuted: p2pshare.net.mapped)."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(self.provide_all)
        except RuntimeError:
            # Discovery has stopped: the daemon is stopping (the router mapping is
            # removed on stop), and there is nothing to announce any more.
            log.debug("addresses changed after discovery stopped")

    async def provide_all(self) -> None:
        # Job outputs are their requester's alone and never announced.
        private = self._catalog.job_outputs()
        for row in await self._shares():
            if not row.stale_reason and row.cid not in private:
                await self.provide(row.cid)

    # -- finding

    def require_peers(self) -> None:
        """Raise NoPeersError when no peer is connected or in the routing table: a
        lookup would ask no one, and the user is told how to join instead."""
        if not self._network.connected_peers() and not self._network.routing_table_size():
            raise NoPeersError

    async def find(
        self,
        cid: str,
        timeout: float,
        trace: LookupTrace | None = None,
        want: int = 1,
        ask: Sequence[str] = (),
    ) -> list[Provider]:
        """Providers of ``cid``: the lookup asks on until ``want`` are known (or the time
        is up), the peers in ``ask`` too, and returns up to ``FIND_LIMIT`` of them, or
        ``want`` if more."""
        key = ContentId.parse(cid).multihash
        give_up_at = trio.current_time() + timeout
        return await self._network.find_providers(
            key,
            limit=max(want, FIND_LIMIT),
            trace=trace,
            want=want,
            give_up_at=give_up_at,
            ask=ask,
        )

    async def find_key(self, key: bytes, timeout: float, want: int) -> list[Provider]:
        """Providers of ``key``, asking on until ``want`` are known or the time is up.

        A lookup that runs out of time returns what it found by then.
        """
        give_up_at = trio.current_time() + timeout
        return await self._network.find_providers(key, limit=want, want=want, give_up_at=give_up_at)

    async def peers(self) -> list[dict[str, Any]]:
        found = self._network.connected_peers()
        latencies: dict[str, float | None] = {}

        async def measure(peer_id: str) -> None:
            latencies[peer_id] = await self._network.ping_ms(peer_id, PING_TIMEOUT)

        async with trio.open_nursery() as nursery:
            for peer in found:
                nursery.start_soon(measure, peer.peer_id)
        return [
            {
                "peer_id": p.peer_id,
                "addrs": list(p.addrs),
                "latency_ms": None if (ms := latencies[p.peer_id]) is None else round(ms, 3),
                "path": self._network.connection_path(p.peer_id),
            }
            for p in found
        ]

    def observed_addrs(self) -> list[str]:
        return self._network.observed_addrs()

    def routing_table_size(self) -> int:
        return self._network.routing_table_size()


def parse_remembered(peer: KnownPeer) -> PeerAddrs | None:
    """A remembered peer to dial; None if what the catalog holds is unusable (a damaged
    row is skipped, not fatal)."""
    return checked_peer(peer.peer_id, peer.addrs)
