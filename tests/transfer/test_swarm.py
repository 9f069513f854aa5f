"""The swarm's provider policy on sequences of events: no sockets, no trio, no clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.bitfield import Bitfield
from p2pshare.transfer import failures
from p2pshare.transfer.picker import Picker
from p2pshare.transfer.swarm import (
    ANNOUNCE_JUDGED_AFTER,
    CONNECT_TIMEOUT,
    LOOKUP_INTERVAL,
    MAX_PROVIDERS,
    REATTACH_DELAYS,
    Refresh,
    Source,
    Swarm,
    Tick,
    slow,
)

PEERS = ["a", "b", "c", "liar"]


@given(st.lists(st.booleans(), max_size=20))
def test_failing_provider_is_redialed_only_after_the_delays(served: list[bool]) -> None:
    swarm = Swarm()
    swarm.keep("a")
    in_a_row = 0
    for brought_a_chunk in served:
        delay = swarm.after_link("a", served=brought_a_chunk, done=False)
        in_a_row = 0 if brought_a_chunk else in_a_row
        if in_a_row == len(REATTACH_DELAYS):
            assert delay is None
            assert "a" in swarm.given_up
            assert swarm.on_found([Source("a")]) == []
            return
        assert delay == REATTACH_DELAYS[in_a_row], "the delay of this failure in a row"
        in_a_row += 1


def test_provider_is_let_go_when_the_download_is_done() -> None:
    swarm = Swarm()
    swarm.keep("a")
    assert swarm.after_link("a", served=False, done=True) is None
    assert "a" not in swarm.given_up


_event = st.one_of(
    st.tuples(st.just("found"), st.lists(st.sampled_from(PEERS), max_size=4)),
    st.tuples(st.just("link_down"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("drop"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("gone"), st.sampled_from(PEERS)),
)


@given(st.lists(_event, max_size=30), st.lists(_event, max_size=30))
def test_liar_is_banned_and_never_dialed_again(
    before: list[tuple[object, ...]], after: list[tuple[object, ...]]
) -> None:
    swarm = Swarm([Source("liar")])

    def play(events: list[tuple[object, ...]]) -> list[str]:
        dialed = []
        for event in events:
            match event:
                case ("found", list(peers)):
                    found = [Source(str(p)) for p in peers]
                    dialed += [s.peer_id for s in swarm.on_found(found)]
                case ("link_down", str(peer), bool(served)):
                    if swarm.after_link(peer, served=served, done=False) is not None:
                        dialed.append(peer)
                case ("drop", str(peer), bool(refused)) if peer != "liar":
                    swarm.on_drop(peer, failures.GONE, refused=refused)
                case ("gone", str(peer)):
                    swarm.on_gone(peer)
        return dialed

    play(before)
    swarm.on_drop("liar", failures.BAD_CHUNK, ban=True)
    swarm.on_gone("liar")
    assert "liar" not in play(after)
    assert swarm.banned == ["liar"]
    assert swarm.why["liar"] == failures.BAD_CHUNK, "a later, milder reason does not hide it"
    assert "liar" not in [s.peer_id for s in swarm.on_first_lookup([Source("liar")])]


# One look at the providers: seconds since the last, whether a provider may still
# send a missing chunk, chunks being stored, whether a lookup runs.
# Mostly alone, so that the window runs out often.
_tick = st.tuples(
    st.floats(min_value=0.0, max_value=8.0),
    st.sampled_from([False, False, False, True]),
    st.sampled_from([0, 0, 0, 1]),
    st.booleans(),
)


@given(st.lists(_tick, min_size=1, max_size=40))
def test_download_fails_only_after_the_no_useful_provider_window(
    ticks: list[tuple[float, bool, int, bool]],
) -> None:
    verified = Bitfield(4)
    picker = Picker(verified)
    swarm = Swarm()
    swarm.start_transfer(0.0)
    now, alone_since = 0.0, None
    for step, useful, storing, looking in ticks:
        now += step
        swarm.active = {"seeder"} if useful else set()
        swarm.looking = looking
        tick = swarm.on_tick(now, picker, storing=storing)
        if useful or storing:
            alone_since = None
            assert tick is Tick.WAIT
        elif alone_since is None:
            alone_since = now
            assert tick is Tick.LOOK_UP, "the first moment alone asks for a lookup"
            assert swarm.lookup_due(now) is None or looking
        else:
            window_over = now - alone_since >= CONNECT_TIMEOUT
            assert (tick is Tick.FAIL) == (window_over and not looking)
        if tick is Tick.FAIL:
            return


def test_provider_holding_no_missing_chunk_does_not_keep_the_download_waiting() -> None:
    verified = Bitfield(4)
    verified.set(0)
    picker = Picker(verified)
    stale = Bitfield(4)
    stale.set(0)
    picker.add_peer("stale", stale)
    swarm = Swarm()
    swarm.keep("stale")
    assert not swarm.hopeful(picker)
    assert swarm.stall_reasons(picker) == {}
    swarm.sources["stale"] = Source("stale")
    assert swarm.stall_reasons(picker) == {"stale": failures.HOLDS_NONE}


@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=20.0), st.booleans()), max_size=30))
def test_lookup_runs_every_interval_or_at_once_when_wanted(
    steps: list[tuple[float, bool]],
) -> None:
    swarm = Swarm()
    swarm.looked_up = True
    swarm.start_transfer(0.0)
    now, last = 0.0, 0.0
    for step, lose_last_link in steps:
        now += step
        if lose_last_link:
            swarm.on_drop("a", failures.GONE, last=True)
        due = swarm.lookup_due(now)
        if lose_last_link or now >= last + LOOKUP_INTERVAL:
            assert due is None
            swarm.on_lookup_start()
            assert swarm.lookup_due(now) is not None, "not twice at once"
            swarm.on_lookup_end(now)
            last = now
        else:
            assert due == pytest.approx(last + LOOKUP_INTERVAL - now)


def test_periodic_lookup_waits_while_every_provider_slot_is_taken() -> None:
    swarm = Swarm()
    swarm.looked_up = True
    swarm.start_transfer(0.0)
    swarm.on_found([Source(f"p{i}") for i in range(MAX_PROVIDERS)])
    late = 3 * LOOKUP_INTERVAL
    assert swarm.lookup_due(late) == LOOKUP_INTERVAL, "full: nothing found could be linked"
    swarm.on_gone("p0")
    assert swarm.lookup_due(late) is None, "a slot freed: the overdue lookup runs"
    swarm.keep("p0")
    swarm.on_drop("p1", failures.GONE, last=True)
    assert swarm.lookup_due(late) is None, "wanted now: runs even when full"


def test_first_lookup_runs_at_once_when_the_setup_left_it() -> None:
    swarm = Swarm([Source("hint")])
    swarm.start_transfer(0.0)
    assert swarm.lookup_due(0.0) is None


def test_lookup_adds_providers_up_to_the_limit() -> None:
    swarm = Swarm()
    found = [Source(f"p{i}") for i in range(MAX_PROVIDERS + 5)]
    assert len(swarm.on_found(found)) == MAX_PROVIDERS
    assert swarm.on_found(found) == [], "those kept are not dialed twice"


def test_a_crowd_spreads_over_every_provider_found() -> None:
    """Each downloader links to its own draw of the providers a lookup returns (in the
    same order to all), the hinted ones first, not the first ``MAX_PROVIDERS`` of them."""
    hint = Source("seeder")
    found = [hint, *(Source(f"p{i}") for i in range(2 * MAX_PROVIDERS))]
    times_linked: Counter[str] = Counter()
    for seed in range(20):
        first = Swarm([hint], rng=random.Random(seed)).on_first_lookup(found)
        assert first[0] == hint
        assert sorted(s.peer_id for s in first) == sorted(s.peer_id for s in found)
        later = Swarm([hint], rng=random.Random(seed))
        later.keep("seeder")
        linked = later.on_found(found)
        assert len(linked) == MAX_PROVIDERS - 1, "the seeder has a link already"
        times_linked.update(s.peer_id for s in linked)
    assert set(times_linked) == {s.peer_id for s in found[1:]}, "every provider is used"
    assert max(times_linked.values()) < 20, "none is linked by the whole crowd"


def test_partial_provider_is_asked_again_only_with_nothing_in_flight() -> None:
    picker = Picker(Bitfield(4))
    partial = Bitfield(4)
    partial.set(0)
    picker.add_peer("p", partial)
    assert Swarm.refresh("p", picker) is Refresh.ASK
    assert picker.next_request("p") == range(1)
    assert Swarm.refresh("p", picker) is Refresh.SKIP
    picker.add_peer("p", Bitfield.full(4))
    assert Swarm.refresh("p", picker) is Refresh.STOP
    assert Swarm.refresh("gone", picker) is Refresh.STOP


@given(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=4),
            st.lists(st.integers(min_value=0, max_value=3), max_size=60),
        )
    )
)
def test_endgame_asks_duplicates_only_at_the_end(
    case: tuple[int, list[list[bool]], list[int]],
) -> None:
    size, holdings, askers = case
    picker = Picker(Bitfield(size))
    peers = []
    for i, bits in enumerate(holdings):
        have = Bitfield(size)
        for index, held in enumerate(bits):
            if held:
                have.set(index)
        picker.add_peer(f"p{i}", have)
        peers.append((f"p{i}", have))
    for asker in askers:
        peer, have = peers[asker % len(peers)]
        free = [
            i
            for i in have.iter_set()
            if not picker.verified[i] and not any(i in picker.in_flight(p) for p, _ in peers)
        ]
        run = picker.next_request(peer)
        if run is None:
            continue
        duplicate = any(i in picker.in_flight(p) for p, _ in peers if p != peer for i in run)
        if duplicate:
            assert free == [], "a duplicate only once this peer has no unasked chunk left"


def test_a_download_that_finishes_before_the_next_lookup_is_not_slow() -> None:
    # 64 chunks, 20 of them in 2 s: 44 more take 4.4 s, before any lookup finds it.
    assert not slow(missing=44, fetched=20, elapsed=2.0)
    # 2 of them in 2 s: 62 more take 62 s, so others should fetch what it holds.
    assert slow(missing=62, fetched=2, elapsed=2.0)


@given(
    missing=st.integers(0, 1000),
    fetched=st.integers(0, 1000),
    elapsed=st.floats(0, 3600, allow_nan=False),
)
def test_a_download_is_slow_if_it_would_finish_after_the_next_lookup(
    missing: int, fetched: int, elapsed: float
) -> None:
    judged = slow(missing=missing, fetched=fetched, elapsed=elapsed)
    if missing == 0 or elapsed < ANNOUNCE_JUDGED_AFTER:
        assert not judged, "complete, or too early to judge"
    elif elapsed >= LOOKUP_INTERVAL or fetched == 0:
        assert judged, "running a lookup interval already, or nothing came since it began"
    else:
        finish_in = missing / (fetched / elapsed)
        assert judged == (finish_in >= LOOKUP_INTERVAL)


def test_a_stalled_download_turns_slow_as_its_rate_falls() -> None:
    """12 chunks came in the first second, then nothing: the estimate grows with time."""
    times = [t / 10 for t in range(20, 10 * int(LOOKUP_INTERVAL) + 1)]
    first = next(t for t in times if slow(missing=29, fetched=12, elapsed=t))
    assert first == pytest.approx(12 / 29 * LOOKUP_INTERVAL, abs=0.1)
