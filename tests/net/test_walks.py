"""The walks' state on a simulated network: whom they ask, when they end."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID

from p2pshare.net.walks import K_CLOSEST, ClosestWalk, key_in_range


def network(size: int, seed: int) -> list[ID]:
    rng = random.Random(seed)
    return [ID(b"\x00\x24" + rng.randbytes(36)) for _ in range(size)]


def run(walk: ClosestWalk, answer: dict[ID, list[ID] | None]) -> int:
    """Ask, one at a time, until the walk names no one; how many were asked."""
    asked = 0
    while (peer := walk.next_peer()) is not None:
        asked += 1
        walk.answer(peer, answer[peer])
    return asked


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(K_CLOSEST + 1, 300))
def test_a_walk_finds_the_closest_peers_and_asks_few_more(seed: int, size: int) -> None:
    peers = network(size, seed)
    key = random.Random(seed).randbytes(34)
    me, *others = peers
    # Each peer knows a random fifth of the network and names the closest it knows.
    rng = random.Random(seed + 1)
    views = {p: rng.sample(peers, max(K_CLOSEST, size // 5)) for p in others}
    answer: dict[ID, list[ID] | None] = {
        p: sort_peer_ids_by_distance(key, views[p] + [p])[:K_CLOSEST] for p in others
    }
    start = set(rng.sample(others, K_CLOSEST))
    walk = ClosestWalk(key, me, set(start))
    asked = run(walk, answer)
    # Every peer it learnt of, from the start or from an answer: the closest of them
    # all answered, and they are what it found.
    learnt = start.union(*(answer[p] or [] for p in walk.answered)) - {me}
    assert walk.closest() == sort_peer_ids_by_distance(key, list(learnt))[:K_CLOSEST]
    assert me not in walk.asked
    assert asked == len(walk.asked) <= len(others)


def test_a_walk_ends_once_the_closest_known_have_answered() -> None:
    peers = network(200, 7)
    key = b"some key"
    me, *others = peers
    # Every peer knows everyone: each answer names the 20 truly closest.
    closest = sort_peer_ids_by_distance(key, others)[:K_CLOSEST]
    answer: dict[ID, list[ID] | None] = dict.fromkeys(others, closest)
    walk = ClosestWalk(key, me, set(others[:K_CLOSEST]))
    asked = run(walk, answer)
    assert walk.closest() == closest
    # The first peers known, then the closest: never the whole network.
    assert asked <= 2 * K_CLOSEST


def test_a_peer_that_does_not_answer_makes_way_for_the_next_closest() -> None:
    peers = network(60, 3)
    key = b"another key"
    me, *others = peers
    ranked = sort_peer_ids_by_distance(key, others)
    silent = ranked[0]
    answer: dict[ID, list[ID] | None] = dict.fromkeys(others, ranked[: K_CLOSEST + 5])
    answer[silent] = None
    walk = ClosestWalk(key, me, set(others))
    run(walk, answer)
    assert walk.closest() == ranked[1 : K_CLOSEST + 1]
    assert silent in walk.asked


def test_a_walk_for_a_node_that_knows_no_one_asks_no_one() -> None:
    me = network(1, 1)[0]
    walk = ClosestWalk(b"k", me, {me})
    assert walk.next_peer() is None
    assert walk.closest() == []


# Up to 1/256 of the key space: 2**14 tries then miss with odds of e**-64.
@settings(deadline=None)
@given(low_bits=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_a_bucket_key_hashes_into_the_buckets_range(low_bits: int, seed: int) -> None:
    width = 2 ** (256 - low_bits)
    low = random.Random(seed).randrange(2**low_bits) * width
    key = key_in_range(low, low + width)
    assert low <= int.from_bytes(hashlib.sha256(key).digest(), "big") < low + width
