"""The compute protocol end to end in one process: real worker pools, memory streams.

Workers are ComputeService instances with real sandboxed worker processes; their
content comes from a dict instead of the network.  The requester side is the real
requester code.  A scripted liar stands in for a dishonest worker.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from p2pshare.compute.channel import WorkerChannel
from p2pshare.compute.replicas import Replica, compare, run_replicas
from p2pshare.compute.requester import JobRequest, Requester
from p2pshare.compute.service import ComputeService, Fetched
from p2pshare.compute.workers import (
    NotOfferingError,
    Worker,
    ask_offer,
    collect_offers,
    rank_workers,
)
from p2pshare.config import ComputeConfig
from p2pshare.errors import RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.proto.cid import ContentId
from p2pshare.proto.job import Accept, JobRejectedError, RejectCode, Result, Submit
from p2pshare.proto.jobspec import JobLimits, JobSpec, build_job_spec
from p2pshare.proto.offer import Offer, sign_offer
from p2pshare.proto.receipt import JobStatus, output_digest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from pathlib import Path

    from p2pshare.net.streams import ByteStream

    Build = Callable[[str], bytes]

SETTINGS = ComputeConfig(
    enabled=True,
    slots=1,
    max_fuel=10**10,
    max_memory=32 * 1024**2,
    max_wall=5,
    max_output=1024**2,
    max_input=1024**2,
)
LIMITS = JobLimits(fuel=10**9, memory=16 * 1024**2, wall_seconds=5, max_output=1024**2)
READY_WAIT = 30.0


def cid_of(data: bytes) -> ContentId:
    """A content ID standing for ``data`` (the tests' content store is a dict)."""
    return ContentId.of(b"test-content:" + data)


@dataclass
class Content:
    """What the fake network holds, by content ID, and what each fetch moved."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)

    def add(self, data: bytes) -> ContentId:
        cid = cid_of(data)
        self.blobs[str(cid)] = data
        return cid

    async def fetch(
        self, cid: ContentId, dest: Path, *, max_bytes: int, hints: Sequence[str]
    ) -> Fetched:
        data = self.blobs[str(cid)]
        if len(data) > max_bytes:
            raise JobRejectedError(RejectCode.OVERSIZE, f"{cid} is too large")
        self.fetches.append(str(cid))
        await trio.Path(dest).write_bytes(data)
        return Fetched(len(data), len(data))


@dataclass
class Network:
    """Workers reachable by peer ID; each open_stream starts a handler on a fresh pair."""

    nursery: trio.Nursery
    content: Content
    handlers: dict[str, Callable[[ByteStream, str], object]] = field(default_factory=dict)
    requester: str = field(default_factory=lambda: NodeKey.generate().peer_id)

    async def open_stream(self, peer_id: str, _addrs: Sequence[str]) -> ByteStream:
        mine, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.handlers[peer_id], theirs, self.requester)  # type: ignore[arg-type]
        return mine


async def _no_announce() -> None:
    await trio.sleep_forever()


class FakeOutputs:
    """Job outputs kept as files, under a quota of ``room`` bytes."""

    def __init__(self, directory: Path, room: int = 1 << 40) -> None:
        directory.mkdir()
        self.directory = directory
        self.room = room
        self.asked: list[int] = []
        self.delivered_to: list[tuple[ContentId, str]] = []

    def make_room(self, nbytes: int) -> bool:
        self.asked.append(nbytes)
        return nbytes <= self.room

    def keep(self, path: Path, requester: str) -> ContentId:
        data = path.read_bytes()
        (self.directory / path.name).write_bytes(data)
        return cid_of(data)

    def delivered(self, cid: ContentId, requester: str) -> None:
        self.delivered_to.append((cid, requester))


async def start_worker(
    network: Network,
    tmp_path: Path,
    name: str,
    settings: ComputeConfig = SETTINGS,
    outputs: FakeOutputs | None = None,
) -> tuple[ComputeService, str]:
    key = NodeKey.generate()
    service = ComputeService(
        settings,
        key,
        fetch=network.content.fetch,
        outputs=outputs or FakeOutputs(tmp_path / f"{name}-outputs"),
        work_dir=tmp_path / f"{name}-jobs",
        announce=_no_announce,
    )
    await network.nursery.start(service.run)
    with trio.fail_after(READY_WAIT):
        while service.free_slots() == 0:
            await trio.sleep(0.01)
    network.handlers[key.peer_id] = service.handle
    return service, key.peer_id


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        yield Network(nursery, Content())
        nursery.cancel_scope.cancel()


async def workers_of(network: Network, peers: Sequence[str]) -> list[Worker]:
    found, failures = await collect_offers(network.open_stream, [(p, ()) for p in peers])
    assert failures == {}
    return sorted(found, key=lambda w: peers.index(w.peer_id))


def wordcount_submit(network: Network, wasm: Build, text: bytes) -> Submit:
    spec = build_job_spec(
        network.content.add(wasm("wordcount")), stdin=network.content.add(text), limits=LIMITS
    )
    return Submit(spec, secrets.token_bytes(16))


async def ignore(_replica: Replica) -> None:
    return


async def test_offer_is_signed_and_current(network: Network, tmp_path: Path) -> None:
    service, peer = await start_worker(network, tmp_path, "w")
    offer = await ask_offer(network.open_stream, peer, ())
    assert offer.worker_peer_id == peer
    assert (offer.slots, offer.free) == (1, 1)
    assert offer.limits == service.limits()
    assert offer.speed > 0


async def test_replicas_agree_and_the_output_is_the_programs(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    peers = [(await start_worker(network, tmp_path, f"w{i}"))[1] for i in range(2)]
    submit = wordcount_submit(network, wasm, b"one two\nthree\n")
    updates: list[str] = []

    async def on_update(replica: Replica) -> None:
        updates.append(replica.state)

    replicas = await run_replicas(
        network.open_stream, await workers_of(network, peers), submit, 2, on_update
    )
    verdict = compare(replicas)
    assert verdict.agreed
    assert sorted(verdict.majority) == sorted(peers)
    receipt = replicas[0].receipt
    assert receipt is not None
    assert receipt.status is JobStatus.OK
    assert receipt.digest == output_digest(b"2 3 14\n")
    assert receipt.output == cid_of(b"2 3 14\n")
    assert replicas[0].stdout == b"2 3 14\n"
    assert {"accepted", "fetching", "running", "done"} <= set(updates)
    assert all(r.fetched_bytes > 0 for r in replicas)


async def test_a_module_run_again_is_not_fetched_again(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    _, peer = await start_worker(network, tmp_path, "w")
    workers = await workers_of(network, [peer])
    for text in (b"first\n", b"second run\n"):
        replicas = await run_replicas(
            network.open_stream, workers, wordcount_submit(network, wasm, text), 1, ignore
        )
        assert replicas[0].receipt is not None
    module = str(cid_of(wasm("wordcount")))
    assert network.content.fetches.count(module) == 1
    assert len(network.content.fetches) == 3


async def liar(stream: ByteStream, _requester: str, key: NodeKey) -> None:
    """Accepts any job and signs a receipt for output it never computed."""
    from p2pshare.compute.jobs import SandboxResult, sign_result

    channel = WorkerChannel(stream)
    submit = await channel.next_event()
    assert isinstance(submit, Submit)
    await channel.answer(Accept(submit.job_id))
    forged = SandboxResult(JobStatus.OK, 0, 1000, b"42 42 42\n", b"", "made up")
    await channel.answer(Result(sign_result(submit.spec, forged, key, cid_of(b"42 42 42\n"))))
    await channel.aclose()


async def test_a_lying_worker_is_outvoted_and_named(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    honest = [(await start_worker(network, tmp_path, f"w{i}"))[1] for i in range(2)]
    liar_key = NodeKey.generate()
    network.handlers[liar_key.peer_id] = lambda s, r: liar(s, r, liar_key)
    offer = sign_offer(
        Offer(liar_key.public_key, LIMITS, 1024**2, 1, 1, 10**9, 2**31), liar_key
    ).offer
    workers = [
        *await workers_of(network, honest),
        Worker(liar_key.peer_id, (), offer),
    ]
    submit = wordcount_submit(network, wasm, b"a b c\n")
    replicas = await run_replicas(network.open_stream, workers, submit, 3, ignore)
    verdict = compare(replicas)
    assert not verdict.agreed
    assert verdict.dissenters == (liar_key.peer_id,)
    assert sorted(verdict.majority) == sorted(honest)


async def test_two_replicas_that_disagree_have_no_majority(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    _, honest = await start_worker(network, tmp_path, "w")
    liar_key = NodeKey.generate()
    network.handlers[liar_key.peer_id] = lambda s, r: liar(s, r, liar_key)
    offer = sign_offer(
        Offer(liar_key.public_key, LIMITS, 1024**2, 1, 1, 10**9, 2**31), liar_key
    ).offer
    workers = [*await workers_of(network, [honest]), Worker(liar_key.peer_id, (), offer)]
    replicas = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"x\n"), 2, ignore
    )
    verdict = compare(replicas)
    assert not verdict.agreed
    assert verdict.majority == ()
    assert sorted(verdict.dissenters) == sorted([honest, liar_key.peer_id])


async def test_a_receipt_signed_by_another_key_is_refused(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    impostor, victim = NodeKey.generate(), NodeKey.generate()
    network.handlers[victim.peer_id] = lambda s, r: liar(s, r, impostor)
    offer = sign_offer(Offer(victim.public_key, LIMITS, 1024**2, 1, 1, 1, 2**31), victim).offer
    replicas = await run_replicas(
        network.open_stream,
        [Worker(victim.peer_id, (), offer)],
        wordcount_submit(network, wasm, b"x\n"),
        1,
        ignore,
    )
    assert replicas[0].receipt is None
    assert replicas[0].state == "failed"


async def test_forbidden_import_is_refused_by_name_and_the_worker_serves_on(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    _, peer = await start_worker(network, tmp_path, "w")
    workers = await workers_of(network, [peer])
    spec = build_job_spec(network.content.add(wasm("socket")), limits=LIMITS)
    with pytest.raises(JobRejectedError, match="sock_") as caught:
        await run_replicas(network.open_stream, workers, Submit(spec, bytes(16)), 1, ignore)
    assert caught.value.code == RejectCode.FORBIDDEN_IMPORT
    replicas = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"x\n"), 1, ignore
    )
    assert replicas[0].receipt is not None


async def refusal_of(network: Network, tmp_path: Path, spec: JobSpec) -> JobRejectedError:
    """The refusal that ends a job on a fresh worker."""
    _, peer = await start_worker(network, tmp_path, "w")
    workers = await workers_of(network, [peer])
    with pytest.raises(JobRejectedError) as caught:
        await run_replicas(network.open_stream, workers, Submit(spec, bytes(16)), 1, ignore)
    return caught.value


async def test_not_webassembly_is_refused(network: Network, tmp_path: Path) -> None:
    spec = build_job_spec(network.content.add(b"#!/bin/sh\nrm -rf /\n"), limits=LIMITS)
    assert (await refusal_of(network, tmp_path, spec)).code == RejectCode.INVALID_MODULE


async def test_a_job_whose_output_would_not_fit_the_quota_is_refused_before_fetching(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    outputs = FakeOutputs(tmp_path / "outputs", room=LIMITS.max_output - 1)
    _, peer = await start_worker(network, tmp_path, "w", outputs=outputs)
    workers = await workers_of(network, [peer])
    submit = wordcount_submit(network, wasm, b"x\n")
    replicas = await run_replicas(network.open_stream, workers, submit, 1, ignore)
    assert replicas[0].refusal_code == RejectCode.NO_SPACE
    assert "no room for 1048576 bytes of output" in (replicas[0].refused or "")
    assert outputs.asked == [LIMITS.max_output]
    assert network.content.fetches == []
    assert list(outputs.directory.iterdir()) == []


async def test_an_output_sent_with_the_receipt_is_delivered_to_its_requester(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    outputs = FakeOutputs(tmp_path / "outputs")
    _, peer = await start_worker(network, tmp_path, "w", outputs=outputs)
    submit = wordcount_submit(network, wasm, b"one two\n")
    replicas = await run_replicas(
        network.open_stream, await workers_of(network, [peer]), submit, 1, ignore
    )
    assert replicas[0].stdout == b"1 2 8\n"
    with trio.fail_after(5):
        while not outputs.delivered_to:
            await trio.sleep(0.01)
    assert outputs.delivered_to == [(cid_of(b"1 2 8\n"), network.requester)]


async def test_a_module_without_start_is_refused_with_its_reason(
    network: Network, tmp_path: Path
) -> None:
    # Valid WebAssembly, imports nothing, but no _start: the sandbox refuses to start it.
    spec = build_job_spec(network.content.add(b"\0asm\x01\0\0\0"), limits=LIMITS)
    refusal = await refusal_of(network, tmp_path, spec)
    assert refusal.code == RejectCode.INVALID_MODULE
    assert "no _start function" in str(refusal)


async def test_limits_above_the_offer_are_refused_before_fetching(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    _, peer = await start_worker(network, tmp_path, "w")
    workers = await workers_of(network, [peer])
    greedy = replace(LIMITS, memory=SETTINGS.max_memory * 2)
    spec = build_job_spec(network.content.add(wasm("wordcount")), limits=greedy)
    replicas = await run_replicas(network.open_stream, workers, Submit(spec, bytes(16)), 1, ignore)
    assert replicas[0].refusal_code == RejectCode.LIMIT_EXCEEDS_OFFER
    assert "memory" in (replicas[0].refused or "")
    assert network.content.fetches == []
    able, unable = rank_workers(workers, greedy, 0, {})
    assert able == []
    assert "memory" in unable[peer]


async def test_oversize_input_is_refused(network: Network, tmp_path: Path, wasm: Build) -> None:
    big = network.content.add(bytes(SETTINGS.max_input + 1))
    spec = build_job_spec(network.content.add(wasm("wordcount")), stdin=big, limits=LIMITS)
    assert (await refusal_of(network, tmp_path, spec)).code == RejectCode.OVERSIZE


async def test_a_worker_that_stopped_offering_is_replaced_by_the_next(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    busy, busy_peer = await start_worker(network, tmp_path, "busy")
    _, free_peer = await start_worker(network, tmp_path, "free")
    workers = await workers_of(network, [busy_peer, free_peer])
    busy.configure(enabled=False)
    replicas = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"x\n"), 1, ignore
    )
    assert [r.refusal_code for r in replicas] == [RejectCode.NOT_OFFERING, None]
    assert replicas[1].peer_id == free_peer
    assert replicas[1].receipt is not None


async def test_jobs_over_the_rate_limit_are_refused(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    _, peer = await start_worker(network, tmp_path, "w", replace(SETTINGS, jobs_per_minute=0.5))
    workers = await workers_of(network, [peer])
    first = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"1\n"), 1, ignore
    )
    second = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"2\n"), 1, ignore
    )
    assert first[0].receipt is not None
    assert second[0].refusal_code == RejectCode.RATE_LIMITED


async def test_cancelling_the_requester_stops_the_job_on_the_worker(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    service, peer = await start_worker(network, tmp_path, "w")
    workers = await workers_of(network, [peer])
    endless = JobLimits(fuel=10**10, memory=16 * 1024**2, wall_seconds=5, max_output=1024)
    spec = build_job_spec(network.content.add(wasm("spin")), limits=endless)
    running = trio.Event()

    async def on_update(replica: Replica) -> None:
        if replica.state == "running":
            running.set()

    with trio.move_on_after(READY_WAIT) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run_replicas, network.open_stream, workers, Submit(spec, bytes(16)), 1, on_update
            )
            await running.wait()
            assert service.running == 1
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    with trio.fail_after(READY_WAIT):
        while service.running or service.free_slots() == 0:
            await trio.sleep(0.01)
    replicas = await run_replicas(
        network.open_stream, workers, wordcount_submit(network, wasm, b"x\n"), 1, ignore
    )
    assert replicas[0].receipt is not None


async def test_garbage_ends_only_its_own_stream(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    service, peer = await start_worker(network, tmp_path, "w")
    stream = await network.open_stream(peer, ())
    await stream.send_all(b"\x00\x00\x00\x05hello")
    with trio.fail_after(5):
        while await stream.receive_some(1024):
            pass
    assert service.running == 0
    replicas = await run_replicas(
        network.open_stream,
        await workers_of(network, [peer]),
        wordcount_submit(network, wasm, b"x\n"),
        1,
        ignore,
    )
    assert replicas[0].receipt is not None


async def test_a_stream_cut_inside_a_message_is_a_protocol_error() -> None:
    mine, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"\x00\x00\x00\x10abc")
    await theirs.aclose()
    with pytest.raises(RemoteProtocolError, match="inside a job message"):
        await WorkerChannel(mine).next_event()


async def test_a_worker_that_turned_compute_off_is_no_longer_listed(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    service, off = await start_worker(network, tmp_path, "off")
    _, on = await start_worker(network, tmp_path, "on")
    service.configure(enabled=False)
    found, failures = await collect_offers(network.open_stream, [(off, ()), (on, ())])
    assert [w.peer_id for w in found] == [on]
    assert failures == {}
    with pytest.raises(NotOfferingError):
        await ask_offer(network.open_stream, off, ())
    # A requester that still submits (an offer it had before) is told, and moves on.
    old = Worker(off, (), (await workers_of(network, [on]))[0].offer)
    replicas = await run_replicas(
        network.open_stream, [old], wordcount_submit(network, wasm, b"x\n"), 1, ignore
    )
    assert replicas[0].refusal_code == RejectCode.NOT_OFFERING


@dataclass
class FakeOutput:
    """An ``-o`` destination that keeps what it is given."""

    path: Path
    written: list[bytes] = field(default_factory=list)

    async def write(self, data: bytes) -> None:
        self.written.append(data)
        await trio.Path(self.path).write_bytes(data)

    async def fetch(self, cid: ContentId, peer_id: str, digest: bytes) -> bool:
        raise AssertionError("a small output comes with the receipt")


async def test_the_requester_runs_a_job_with_only_the_callables_it_is_given(
    network: Network, tmp_path: Path, wasm: Build
) -> None:
    """compute_run's steps live in compute/, the node only supplies sharing, lookups,
    streams and the destination: share, choose, run k replicas, conclude, unshare."""
    peers = [(await start_worker(network, tmp_path, f"w{i}"))[1] for i in range(2)]
    module, stdin = tmp_path / "wc.wasm", tmp_path / "in.txt"
    module.write_bytes(wasm("wordcount"))
    stdin.write_bytes(b"one two\nthree\n")
    unshared: list[str] = []

    async def share(path: Path) -> tuple[ContentId, bool]:
        return network.content.add(await trio.Path(path).read_bytes()), True

    async def find_workers(want: int, _timeout: float) -> list[tuple[str, tuple[str, ...]]]:
        found: list[tuple[str, tuple[str, ...]]] = [(p, ()) for p in peers]
        return found[:want]

    async def find_holders(_cid: ContentId, _timeout: float) -> list[str]:
        return []

    requester = Requester(
        share=share,
        unshare=unshared.append,
        local_size=lambda cid: len(network.content.blobs[str(cid)]),
        find_workers=find_workers,
        find_holders=find_holders,
        open_stream=network.open_stream,
        modules_dir=tmp_path / "modules",
        find_timeout=1.0,
    )
    events: list[dict[str, Any]] = []

    async def emit(_kind: str, data: dict[str, Any]) -> None:
        events.append(data)

    output = FakeOutput(tmp_path / "out")
    request = JobRequest(module, str(stdin), [], [], LIMITS, replicas=2)
    doc = await requester.run(request, output, emit)
    assert doc["verified"] is True
    assert doc["status"] == "ok"
    assert output.written == [b"2 3 14\n"]
    assert doc["output"] == str(output.path)
    assert sorted(w["peer_id"] for w in doc["workers"]) == sorted(peers)
    assert {w["state"] for w in doc["workers"]} == {"done"}
    assert sorted(unshared) == sorted(network.content.blobs)
    assert [e["phase"] for e in events][:2] == ["sharing", "finding"]
