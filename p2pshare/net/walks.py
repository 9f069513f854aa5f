"""The state of the DHT's iterative walks, without the network: whom to ask next,
what the answers taught, when a walk is over.  p2pshare.net.dht sends the queries.

Distances are py-libp2p's (and go-libp2p's): XOR of the SHA-256 of the key and of
the peer ID, so each peer answers about the same neighbourhood we walk towards.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from libp2p.kad_dht.utils import sort_peer_ids_by_distance

if TYPE_CHECKING:
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

K_CLOSEST = 20
# Random keys tried for one that falls in a bucket's range (key_in_range).  A bucket
# split n times holds 1/2**n of the key space: for n up to 8 the odds of a miss are
# about e**-64; from n = 14 on (a network of over 2**14 * 20 nodes), a miss is likely.
BUCKET_KEY_TRIES = 1 << 14


class Walk(Protocol):
    """What p2pshare.net.dht asks of a walk's state while it sends the queries."""

    def next_peer(self) -> ID | None:
        """The next peer to ask, now counted as asked; None when no one is left."""

    def enough(self) -> bool:
        """Whether the walk can end with queries still out."""


@dataclass
class LookupTrace:
    """How a provider lookup went; filled in as it runs, so a caller that times the
    lookup out still sees how far it got.

    ``hops`` is the length of the referral chain to the first peer that answered with
    a provider: 1 when a peer we already knew had the record, 2 when a peer it named
    had it, ...; 0 when this node held the record itself or nothing was found.
    ``timed_out`` tells a lookup cut short at its deadline from one that ran out of
    peers to ask.
    """

    hops: int = 0
    queried: int = 0
    timed_out: bool = False


class ProviderLookup:
    """What one GET_PROVIDERS lookup knows: the providers found, the peers known and
    asked, and how many referrals away each peer was first named."""

    def __init__(self, key: bytes, me: ID, known: set[ID], trace: LookupTrace, want: int) -> None:
        self.key = key
        self.me = me
        self.found: dict[ID, set[Multiaddr]] = {}
        self.known = known
        self.queried: set[ID] = set()
        self.trace = trace
        self.want = want
        # Referral depth of each peer: 1 for those known at the start, d + 1 for a peer
        # first named by a peer of depth d.
        self.depth = dict.fromkeys(known, 1)
        self.window = K_CLOSEST

    def answer(self, peer: ID, infos: list[PeerInfo], more: list[ID]) -> None:
        for info in infos:
            self.found.setdefault(info.peer_id, set()).update(info.addrs)
        if infos and not self.trace.hops:
            self.trace.hops = self.depth[peer]
        for named in more:
            self.depth.setdefault(named, self.depth[peer] + 1)
        self.known.update(p for p in more if p != self.me)

    def next_peer(self) -> ID | None:
        """The closest known peer not asked yet, now counted as asked; widening from the
        K closest to every peer known once those have no record (routing tables still
        disagree in a young network)."""
        while True:
            peer = _ask_nearest(self.key, self.known, self.queried, self.window)
            if peer is not None:
                self.trace.queried = len(self.queried)
                return peer
            if self.window >= len(self.known):
                return None
            self.window = len(self.known)

    def enough(self) -> bool:
        return len(self.found.keys() - {self.me}) >= self.want


class ClosestWalk:
    """What one FIND_NODE walk for the ``K_CLOSEST`` peers closest to ``key`` knows.

    It ends, as in the Kademlia paper, once each of the closest peers known has
    answered: a peer that failed leaves the candidates and the next closest takes
    its place.  py-libp2p's own walk ran rounds of ten queries and could stop while
    some of the closest peers known had not been asked.
    """

    def __init__(self, key: bytes, me: ID, known: set[ID]) -> None:
        self.key = key
        self.me = me
        self.known = known - {me}
        self.asked: set[ID] = set()
        self.answered: set[ID] = set()
        self.failed: set[ID] = set()

    def answer(self, peer: ID, named: list[ID] | None) -> None:
        """``peer`` named these closer peers, or (None) did not answer: then it stays
        out of the candidates, whoever names it later."""
        if named is None:
            self.failed.add(peer)
            self.known.discard(peer)
            return
        self.answered.add(peer)
        self.known.update(p for p in named if p != self.me and p not in self.failed)

    def next_peer(self) -> ID | None:
        """The closest known peer not asked yet among the ``K_CLOSEST`` closest known,
        now counted as asked; None when each of them has been asked."""
        return _ask_nearest(self.key, self.known, self.asked, K_CLOSEST)

    def enough(self) -> bool:
        return False

    def closest(self) -> list[ID]:
        """The closest peers that answered, closest first."""
        return sort_peer_ids_by_distance(self.key, list(self.answered))[:K_CLOSEST]


def _ask_nearest(key: bytes, known: set[ID], asked: set[ID], window: int) -> ID | None:
    """The closest of the ``window`` peers of ``known`` closest to ``key`` that is not
    in ``asked``, now added to it; None when all of them are."""
    nearest = sort_peer_ids_by_distance(key, list(known))[:window]
    peer = next((p for p in nearest if p not in asked), None)
    if peer is not None:
        asked.add(peer)
    return peer


def key_in_range(low: int, high: int, tries: int = BUCKET_KEY_TRIES) -> bytes:
    """A random key whose SHA-256 (as an integer) is in ``[low, high)``, the range of
    a routing-table bucket; after ``tries`` misses, any random key.

    py-libp2p's refresh draws a number in the range and walks to it as a key, which
    the walk hashes again: its "targeted" refresh of each bucket walked to random
    places of the key space.
    """
    for _ in range(tries):
        key = os.urandom(32)
        if low <= int.from_bytes(hashlib.sha256(key).digest(), "big") < high:
            return key
    return os.urandom(32)
