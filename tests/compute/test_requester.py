"""Choosing workers and judging replicas: pure functions of offers and receipts."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from p2pshare.compute.replicas import Replica, compare
from p2pshare.compute.workers import Worker, rank_workers, too_few_workers
from p2pshare.identity import NodeKey
from p2pshare.proto.jobsession import SessionState
from p2pshare.proto.jobspec import JobLimits
from p2pshare.proto.offer import Offer
from p2pshare.proto.receipt import JobStatus, Receipt

LIMITS = JobLimits(fuel=10**9, memory=16 * 1024**2, wall_seconds=5, max_output=1024)
KEYS = [NodeKey.from_seed(bytes([i]) * 32) for i in range(1, 8)]


def worker(index: int, *, free: int = 1, speed: int = 10**9, **limits: int) -> Worker:
    key = KEYS[index]
    offer = Offer(key.public_key, replace(LIMITS, **limits), 1024**2, 4, free, speed, 2**31)
    return Worker(key.peer_id, (), offer)


def replica(index: int, digest: int, status: JobStatus = JobStatus.OK) -> Replica:
    key = KEYS[index]
    receipt = Receipt(bytes(32), key.public_key, status, 0, 1, None, bytes([digest]) * 32)
    return Replica(key.peer_id, receipt=receipt, state=SessionState.DONE)


def test_workers_holding_the_inputs_come_first_then_free_slots_then_speed() -> None:
    workers = [worker(0, speed=9), worker(1, free=3, speed=1), worker(2, speed=5), worker(3)]
    holdings = {KEYS[2].peer_id: 1, KEYS[3].peer_id: 2}
    able, unable = rank_workers(workers, LIMITS, 0, holdings)
    assert [w.peer_id for w in able] == [KEYS[i].peer_id for i in (3, 2, 1, 0)]
    assert [w.held_inputs for w in able] == [2, 1, 0, 0]
    assert unable == {}


def test_workers_that_cannot_take_the_job_say_why() -> None:
    workers = [worker(0, free=0), worker(1, memory=LIMITS.memory // 2), worker(2)]
    able, unable = rank_workers(workers, LIMITS, 2 * 1024**2, {})
    assert able == []
    assert unable[KEYS[0].peer_id] == "has no free slot"
    assert "memory" in unable[KEYS[1].peer_id]
    assert "input bytes" in unable[KEYS[2].peer_id]


def test_agreeing_replicas_are_verified() -> None:
    verdict = compare([replica(0, 1), replica(1, 1), replica(2, 1)])
    assert verdict.agreed
    assert verdict.dissenters == ()


def test_the_minority_is_named() -> None:
    verdict = compare([replica(0, 1), replica(1, 2), replica(2, 1)])
    assert not verdict.agreed
    assert verdict.majority == (KEYS[0].peer_id, KEYS[2].peer_id)
    assert verdict.dissenters == (KEYS[1].peer_id,)


def test_status_counts_as_much_as_the_digest() -> None:
    verdict = compare([replica(0, 1), replica(1, 1, JobStatus.TRAP), replica(2, 1)])
    assert verdict.dissenters == (KEYS[1].peer_id,)


def test_a_tie_has_no_majority() -> None:
    verdict = compare([replica(0, 1), replica(1, 2)])
    assert (verdict.agreed, verdict.majority, verdict.outcome) == (False, (), None)
    assert set(verdict.dissenters) == {KEYS[0].peer_id, KEYS[1].peer_id}


def test_replicas_without_a_receipt_are_not_counted() -> None:
    refused = Replica(KEYS[3].peer_id, state=SessionState.REFUSED, refused="busy")
    verdict = compare([replica(0, 1), refused])
    assert verdict.agreed
    assert verdict.majority == (KEYS[0].peer_id,)
    assert not compare([refused]).agreed


@given(st.lists(st.integers(1, 3), min_size=1, max_size=7))
def test_majority_and_dissenters_split_the_finished_replicas(digests: list[int]) -> None:
    replicas = [replica(i, d) for i, d in enumerate(digests)]
    verdict = compare(replicas)
    peers = {r.peer_id for r in replicas}
    assert set(verdict.majority) | set(verdict.dissenters) == peers
    assert not set(verdict.majority) & set(verdict.dissenters)
    assert verdict.agreed == (len(set(digests)) == 1)
    if verdict.majority:
        assert len(verdict.majority) * 2 > len(replicas)


def test_timeouts_are_never_evidence() -> None:
    verdict = compare([replica(0, 1, JobStatus.TIMEOUT), replica(1, 1, JobStatus.TIMEOUT)])
    assert (verdict.agreed, verdict.majority, verdict.dissenters) == (False, (), ())
    assert verdict.outcome is None


def test_a_timed_out_replica_neither_confirms_nor_contradicts() -> None:
    verdict = compare([replica(0, 1), replica(1, 2, JobStatus.TIMEOUT)])
    assert verdict.majority == (KEYS[0].peer_id,)
    assert verdict.dissenters == ()
    assert verdict.outcome is not None
    assert verdict.outcome[0] is JobStatus.OK


def test_too_few_workers_says_how_many_were_found() -> None:
    text = too_few_workers(3, 2, {}, {})
    assert text.startswith("found 2 worker(s) able to take the job, 3 needed")
    assert "only 2 worker(s) found offering compute" in text
    assert "no worker announced" not in text


def test_no_worker_at_all_is_said_so() -> None:
    assert "(no worker announced itself in the DHT)" in too_few_workers(1, 0, {}, {})


def test_workers_that_cannot_take_the_job_are_named() -> None:
    text = too_few_workers(2, 1, {"P": "has no free slot"}, {"Q": "timed out"})
    assert "P has no free slot; Q unreachable (timed out)" in text
    assert "only" not in text
