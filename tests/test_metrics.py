"""The node's counters: per-peer rates, chunk checks, DHT lookups and provides, jobs."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pshare import metrics
from p2pshare.metrics import MAX_PEERS, METRICS, RATE_WINDOW_S, Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_totals_are_kept_per_peer_and_for_the_node() -> None:
    clock = FakeClock()
    m = Metrics(clock)
    for _ in range(10):
        clock.now += 1
        m.sent("alice", 1000)
        m.received("bob", 500)
    snap = m.snapshot()
    assert (snap["bytes_sent"], snap["bytes_received"]) == (10_000, 5_000)
    assert snap["up_bps"] == 1000.0
    assert snap["down_bps"] == 500.0
    peers = m.peer_traffic()
    assert peers["alice"] == {
        "bytes_sent": 10_000,
        "bytes_received": 0,
        "up_bps": 1000.0,
        "down_bps": 0.0,
    }
    assert peers["bob"]["down_bps"] == 500.0


def test_live_rates_fall_to_zero_when_traffic_stops_but_totals_stay() -> None:
    clock = FakeClock()
    m = Metrics(clock)
    m.sent("alice", 4096)
    clock.now += RATE_WINDOW_S * 2
    assert m.snapshot()["up_bps"] == 0
    assert m.peer_traffic()["alice"]["up_bps"] == 0
    assert m.snapshot()["bytes_sent"] == 4096


def test_per_peer_rows_stay_bounded_forgetting_idle_peers_first() -> None:
    clock = FakeClock()
    m = Metrics(clock)
    for number in range(MAX_PEERS):
        m.sent(f"old{number}", 1)
    clock.now += RATE_WINDOW_S * 2
    m.sent("busy", 1)
    for number in range(10):
        m.sent(f"new{number}", 1)
    rows = m.peer_traffic()
    assert len(rows) <= MAX_PEERS
    assert "busy" in rows
    assert "new9" in rows


def test_chunk_checks_and_jobs_are_counted_by_outcome() -> None:
    m = Metrics(FakeClock())
    m.chunk_checked(ok=True)
    m.chunk_checked(ok=True)
    m.chunk_checked(ok=False)
    m.job_run("result")
    m.job_run("cancelled")
    m.job_run("result")
    snap = m.snapshot()
    assert (snap["chunks_verified"], snap["chunks_rejected"]) == (2, 1)
    assert snap["jobs_run"] == {"result": 2, "cancelled": 1}


async def test_a_decorated_lookup_is_counted_with_its_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @metrics.timed_lookup(trio.current_time)
    async def lookup() -> str:
        await trio.sleep(3.0)
        METRICS.dht_message(120)
        return "found"

    before = METRICS.snapshot()["dht"]
    assert await lookup() == "found"
    after = METRICS.snapshot()["dht"]
    assert after["lookups"] == before["lookups"] + 1
    # Other tests' lookups in this process leave a total that is no round number.
    waited = after["lookup_seconds_total"] - before["lookup_seconds_total"]
    assert waited == pytest.approx(3.0)
    # 3 s falls in the bucket bounded by 5 s.
    five = metrics.LOOKUP_BUCKETS.index(5.0)
    assert after["lookup_buckets"][five] == before["lookup_buckets"][five] + 1
    assert (after["messages"], after["message_bytes"]) == (
        before["messages"] + 1,
        before["message_bytes"] + 120,
    )


async def test_the_provide_queue_counts_provides_while_they_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    @metrics.counted_provide
    async def provide() -> int:
        await release.wait()
        return 3

    before = METRICS.snapshot()["dht"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(provide)
        nursery.start_soon(provide)
        await trio.testing.wait_all_tasks_blocked()
        assert METRICS.snapshot()["dht"]["provides_running"] == before["provides_running"] + 2
        release.set()
    after = METRICS.snapshot()["dht"]
    assert after["provides_running"] == before["provides_running"]
    assert after["provides"] == before["provides"] + 2
