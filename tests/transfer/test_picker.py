from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.bitfield import Bitfield
from p2pshare.transfer.picker import MAX_DUPLICATES, Picker

if TYPE_CHECKING:
    import random


def field(size: int, indices: list[int] | range) -> Bitfield:
    bits = Bitfield(size)
    for index in indices:
        bits.set(index)
    return bits


def test_rarest_first_then_lowest_index() -> None:
    picker = Picker(Bitfield(6))
    picker.add_peer("a", Bitfield.full(6))
    picker.add_peer("b", field(6, [0, 1, 2, 3, 5]))
    # Chunk 4 is held only by a: a gets it first.
    assert picker.next_request("a") == range(4, 5)
    assert picker.next_request("b") == range(1)


def test_batches_are_contiguous_free_runs() -> None:
    picker = Picker(field(8, [2]), batch=4)
    picker.add_peer("a", Bitfield.full(8))
    assert picker.next_request("a") == range(2)
    assert picker.next_request("a") == range(3, 7)


def test_endgame_duplicates_and_first_arrival_wins() -> None:
    picker = Picker(Bitfield(2))
    picker.add_peer("slow", Bitfield.full(2))
    picker.add_peer("fast", Bitfield.full(2))
    assert picker.next_request("slow") == range(1)
    assert picker.next_request("fast") == range(1, 2)
    assert picker.received("fast", 1) == (True, set())
    assert picker.next_request("fast") == range(1), "endgame: duplicate the slow chunk"
    assert picker.next_request("fast") is None
    new, others = picker.received("fast", 0)
    assert new
    assert others == {"slow"}
    assert picker.done
    assert picker.received("slow", 0) == (False, set())


def test_a_leaving_peer_gives_its_chunks_back() -> None:
    picker = Picker(Bitfield(3))
    picker.add_peer("a", Bitfield.full(3))
    picker.add_peer("b", Bitfield.full(3))
    assert picker.next_request("a") == range(1)
    picker.remove_peer("a")
    assert picker.next_request("b") == range(1)
    assert picker.holders(0) == 1


@given(
    st.integers(min_value=1, max_value=40),
    st.lists(st.sets(st.integers(min_value=0, max_value=39)), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
    st.integers(min_value=0, max_value=39),
)
def test_every_held_chunk_is_fetched_exactly_once_unless_duplicated(
    size: int, holdings: list[set[int]], rng: random.Random, start: int
) -> None:
    picker = Picker(Bitfield(size), batch=3, start=start)
    peers = {f"p{i}": field(size, sorted(i for i in h if i < size)) for i, h in enumerate(holdings)}
    for name, have in peers.items():
        picker.add_peer(name, have)
    reachable = set().union(*({i for i in h if i < size} for h in holdings))
    pending: list[tuple[str, int]] = []
    deliveries: dict[int, int] = {}
    for _ in range(10 * size + 10):
        for name in peers:
            run = picker.next_request(name)
            if run is not None:
                assert all(peers[name][i] for i in run)
                pending += [(name, i) for i in run]
        if not pending:
            break
        name, index = pending.pop(rng.randrange(len(pending)))
        new, _ = picker.received(name, index)
        if new:
            deliveries[index] = deliveries.get(index, 0) + 1
        in_flight = [i for n in peers for i in picker.in_flight(n)]
        assert all(in_flight.count(i) <= MAX_DUPLICATES for i in in_flight)
    assert set(deliveries) == reachable
    assert all(count == 1 for count in deliveries.values())


def test_a_partial_peers_growing_list_is_used_and_its_requests_stay_its_own() -> None:
    picker = Picker(Bitfield(4))
    picker.add_peer("seed", Bitfield.full(4))
    picker.add_peer("partial", field(4, [0]))
    assert picker.next_request("partial") == range(1)
    assert picker.next_request("partial") is None
    picker.update_have("partial", field(4, [0, 2]))
    assert picker.in_flight("partial") == {0}, "the request in flight is kept"
    assert picker.holders(2) == 2
    assert picker.holders(0) == 2
    assert picker.next_request("partial") == range(2, 3)
    picker.update_have("partial", field(4, [2]))
    assert picker.holders(0) == 1
    picker.remove_peer("partial")
    picker.update_have("partial", Bitfield.full(4))
    assert picker.have("partial") is None, "a peer that left is not added back"
    assert picker.holders(3) == 1


OPS = ("ask", "ask", "ask", "receive", "release", "grow", "leave", "join")


# A true Random: hypothesis's own leans to the first choice and the smallest value, and
# would try almost only "ask" by peer "a".
@given(st.integers(min_value=1, max_value=8), st.randoms(use_true_random=True))
def test_a_peer_with_nothing_to_ask_is_answered_as_a_full_search_would(
    size: int, rng: random.Random
) -> None:
    """Skipping the search for a peer found with nothing to ask for never hides a chunk
    a full search would have picked, whatever happened since."""
    picker = Picker(Bitfield(size), batch=2)
    pending: list[tuple[str, int]] = []
    for _ in range(40):
        op, peer = rng.choice(OPS), rng.choice("abc")
        bits = field(size, [i for i in range(size) if rng.random() < 0.4])
        if op == "ask":
            fresh = copy.deepcopy(picker)
            fresh._nothing_for.clear()  # the same picker, searching afresh
            run = picker.next_request(peer)
            assert run == fresh.next_request(peer)
            if run is not None:
                pending += [(peer, i) for i in run]
        elif op == "receive" and pending:
            picker.received(*pending.pop(rng.randrange(len(pending))))
        elif op == "release" and pending:
            picker.release(*pending.pop(rng.randrange(len(pending))))
        elif op == "grow" and (old := picker.have(peer)) is not None:
            for index in old.iter_set():
                bits.set(index)
            picker.update_have(peer, bits)
        elif op in ("leave", "join"):
            picker.remove_peer(peer)
            pending = [(p, i) for p, i in pending if p != peer]
            if op == "join":
                picker.add_peer(peer, bits)


def test_a_peer_that_had_nothing_to_ask_for_gets_a_chunk_given_back_or_newly_held() -> None:
    picker = Picker(Bitfield(2))
    for peer in "abc":
        picker.add_peer(peer, field(2, [0]))
    assert picker.next_request("a") == range(1)
    assert picker.next_request("b") is None, "chunk 1 is not in flight: no endgame yet"
    picker.release("a", 0)
    assert picker.next_request("b") == range(1), "given back"
    picker.update_have("c", field(2, [0, 1]))
    assert picker.next_request("c") == range(1, 2), "newly held"
    assert picker.next_request("a") == range(1), "every missing chunk in flight: endgame"


def test_duplicates_wait_until_every_missing_chunk_is_in_flight() -> None:
    """A partial peer in a crowd holds chunks others are fetching already; it was asked
    for them whenever it had nothing fresh, all through a download, not only at its end."""
    picker = Picker(Bitfield(3))
    picker.add_peer("seed", Bitfield.full(3))
    picker.add_peer("a", field(3, [0]))
    picker.add_peer("partial", field(3, [0]))
    assert picker.next_request("a") == range(1)
    assert picker.next_request("partial") is None
    assert picker.next_request("seed") == range(1, 2)
    assert picker.next_request("partial") is None
    assert picker.next_request("seed") == range(2, 3)
    assert picker.next_request("partial") == range(1), "endgame: a duplicate now"


def test_downloaders_that_know_only_the_seeder_ask_it_for_different_chunks() -> None:
    seeder = field(8, range(8))
    first, second = Picker(Bitfield(8), start=0), Picker(Bitfield(8), start=5)
    first.add_peer("seeder", seeder)
    second.add_peer("seeder", seeder)
    assert [first.next_request("seeder") for _ in range(3)] == [range(i, i + 1) for i in (0, 1, 2)]
    assert [second.next_request("seeder") for _ in range(3)] == [range(i, i + 1) for i in (5, 6, 7)]


def test_from_its_start_a_picker_goes_on_from_the_first_chunk_and_rarest_still_wins() -> None:
    picker = Picker(field(6, [6 - 1]), batch=4, start=4)
    picker.add_peer("seeder", field(6, range(6)))
    assert picker.next_request("seeder") == range(4, 5), "chunk 5 is held already"
    assert picker.next_request("seeder") == range(4)
    rare = Picker(Bitfield(6), start=3)
    rare.add_peer("a", field(6, range(6)))
    rare.add_peer("b", field(6, [3, 4, 5]))
    assert rare.next_request("a") == range(1), "held by a alone, before 3 held by both"
