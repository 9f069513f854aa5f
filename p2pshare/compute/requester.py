"""The requester side of the compute protocol: find workers, run replicas, compare them.

* :func:`ask_offer` fetches and checks one worker's signed offer;
* :func:`rank_workers` keeps the workers whose offer fits a job and orders them,
  those already holding the job's inputs first;
* :func:`run_replicas` submits a job to k workers at once, replacing workers that
  are busy or unreachable, and returns every replica's verified receipt;
* :func:`compare` says whether the receipts agree and who disagreed.

The node's control API (p2pshare.node.compute_api) supplies the streams, the clock
and the shares; nothing here touches files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

import trio

from p2pshare.compute.channel import JobChannel
from p2pshare.errors import RemoteError, UserError
from p2pshare.proto.job import (
    JobRejectedError,
    OfferReply,
    Progress,
    Reject,
    RejectCode,
    Result,
)
from p2pshare.proto.jobsession import RequesterSession, SessionState
from p2pshare.proto.keys import public_key_from_peer_id
from p2pshare.proto.offer import verify_offer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.job import Submit
    from p2pshare.proto.jobspec import JobLimits
    from p2pshare.proto.offer import Offer
    from p2pshare.proto.receipt import JobStatus, Receipt

    # Opens a compute-protocol stream to a peer, dialing the given addresses if needed.
    OpenStream: TypeAlias = Callable[[str, Sequence[str]], Awaitable[ByteStream]]

log = logging.getLogger(__name__)

OFFER_TIMEOUT: Final = 5.0
# Fetching a job's content is bounded by the worker (600 s); a result comes within
# that, the job's wall limit, and this margin for compiling and storing the output.
RESULT_MARGIN: Final = 660.0
CANCEL_GRACE: Final = 2.0
OPEN_RETRY_DELAY: Final = 0.2
# A worker refusing for one of these reasons may take the job another time or
# another worker may: try the next one.  Any other refusal is about the job itself.
_TRY_ANOTHER: Final = frozenset(
    {
        RejectCode.BUSY,
        RejectCode.RATE_LIMITED,
        RejectCode.LIMIT_EXCEEDS_OFFER,
        RejectCode.NO_SPACE,
        RejectCode.NOT_OFFERING,
        RejectCode.INTERNAL,
    }
)


@dataclass(frozen=True)
class Worker:
    """A worker found in the DHT, with the offer it signed."""

    peer_id: str
    addrs: tuple[str, ...]
    offer: Offer
    held_inputs: int = 0


@dataclass
class Replica:
    """One worker's run of the job, as the requester saw it."""

    peer_id: str
    receipt: Receipt | None = None
    receipt_data: bytes = b""
    # The output itself when the worker sent it with the receipt (small outputs).
    stdout: bytes | None = None
    refused: str | None = None
    refusal_code: str | None = None
    state: SessionState = SessionState.SUBMITTED
    fetched_bytes: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        receipt = self.receipt
        return {
            "peer_id": self.peer_id,
            "state": self.state.value,
            "status": None if receipt is None else receipt.status.value,
            "exit_code": None if receipt is None else receipt.exit_code,
            "fuel_used": None if receipt is None else receipt.fuel_used,
            "digest": None if receipt is None else receipt.digest.hex(),
            "output": None if receipt is None or receipt.output is None else str(receipt.output),
            "refused": self.refused,
            "fetched_bytes": self.fetched_bytes,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass(frozen=True)
class Verdict:
    """How the replicas' receipts compare.

    ``agreed`` when every replica gave the same outcome; ``majority`` holds the peers
    of the largest group when it is a strict majority; ``dissenters`` are the peers
    outside it (every peer when there is no majority).
    """

    agreed: bool
    majority: tuple[str, ...]
    dissenters: tuple[str, ...]
    outcome: tuple[JobStatus, int, bytes] | None


class WorkerOfferError(RemoteError):
    """A worker's offer could not be had or did not verify."""


class NotOfferingError(WorkerOfferError):
    """The peer has turned compute off: it is no worker now."""


async def ask_offer(
    open_stream: OpenStream,
    peer_id: str,
    addrs: Sequence[str],
    *,
    now: Callable[[], float] = time.time,
) -> Offer:
    """The current offer of ``peer_id``, checked against its key and the clock."""
    try:
        worker_key = public_key_from_peer_id(peer_id)
    except ValueError as exc:
        raise WorkerOfferError(str(exc)) from None
    session = RequesterSession(worker_key)
    with trio.fail_after(OFFER_TIMEOUT):
        channel = JobChannel(await open_stream(peer_id, addrs), session)
        try:
            await channel.send(session.offer_request())
            reply = await channel.next_event()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await channel.aclose()
    if isinstance(reply, Reject) and reply.code == RejectCode.NOT_OFFERING:
        raise NotOfferingError(f"{peer_id} does not offer compute now")
    if not isinstance(reply, OfferReply):
        raise WorkerOfferError(f"{peer_id} answered an offer request with {reply!r}")
    return verify_offer(reply.offer, worker=worker_key, now=int(now())).offer


async def collect_offers(
    open_stream: OpenStream,
    candidates: Sequence[tuple[str, Sequence[str]]],
    *,
    now: Callable[[], float] = time.time,
) -> tuple[list[Worker], dict[str, str]]:
    """Ask every candidate for its offer at once; the workers and why the others failed.

    A candidate that answers it does not offer compute (turned off) is in neither.
    """
    workers: list[Worker] = []
    failures: dict[str, str] = {}

    async def ask(peer_id: str, addrs: Sequence[str]) -> None:
        try:
            offer = await ask_offer(open_stream, peer_id, addrs, now=now)
        except NotOfferingError:
            # Its DHT record outlives its offer; it is simply not a worker any more.
            return
        except (trio.TooSlowError, UserError, RemoteError) as exc:
            failures[peer_id] = str(exc) or type(exc).__name__
            return
        workers.append(Worker(peer_id, tuple(addrs), offer))

    async with trio.open_nursery() as nursery:
        for peer_id, addrs in candidates:
            nursery.start_soon(ask, peer_id, addrs)
    return workers, failures


def rank_workers(
    workers: Sequence[Worker],
    limits: JobLimits,
    input_bytes: int,
    holdings: dict[str, int],
) -> tuple[list[Worker], dict[str, str]]:
    """The workers able to take a job, best first, and why each other one cannot.

    Best means: already holding the most of the job's inputs (they need not travel),
    then most free slots, then fastest.
    """
    able: list[Worker] = []
    unable: dict[str, str] = {}
    for worker in workers:
        offer = worker.offer
        over = limits.exceeding(offer.limits)
        if over:
            unable[worker.peer_id] = "offers less than the job asks: " + ", ".join(over)
        elif offer.free == 0:
            unable[worker.peer_id] = "has no free slot"
        elif input_bytes > offer.max_input:
            unable[worker.peer_id] = f"takes at most {offer.max_input} input bytes"
        else:
            able.append(
                Worker(worker.peer_id, worker.addrs, offer, holdings.get(worker.peer_id, 0))
            )
    able.sort(key=lambda w: (-w.held_inputs, -w.offer.free, -w.offer.speed, w.peer_id))
    return able, unable


def too_few_workers(
    replicas: int, able: int, unable: dict[str, str], failures: dict[str, str]
) -> str:
    """Why fewer than ``replicas`` workers can take a job, as one sentence."""
    found = able + len(unable) + len(failures)
    reasons = [f"{p} {why}" for p, why in sorted(unable.items())]
    reasons += [f"{p} unreachable ({why})" for p, why in sorted(failures.items())]
    if found == 0:
        reasons = ["no worker announced itself in the DHT"]
    elif found < replicas:
        reasons.insert(0, f"only {found} worker(s) found offering compute")
    return (
        f"found {able} worker(s) able to take the job, {replicas} needed "
        f"({'; '.join(reasons)}); lower --replicas or the limits, or try again later"
    )


def compare(replicas: Sequence[Replica]) -> Verdict:
    """Group the replicas with a receipt by outcome (status, exit code, stdout digest).

    Only receipts that are evidence count (not a timeout): a timed-out replica neither
    confirms nor contradicts the others.
    """
    done = [r for r in replicas if r.receipt is not None and r.receipt.status.is_evidence]
    groups = Counter(r.receipt.outcome for r in done if r.receipt is not None)
    if not groups:
        return Verdict(agreed=False, majority=(), dissenters=(), outcome=None)
    outcome, size = groups.most_common(1)[0]
    tied = sum(1 for count in groups.values() if count == size) > 1
    if len(groups) == 1:
        return Verdict(
            agreed=True, majority=tuple(r.peer_id for r in done), dissenters=(), outcome=outcome
        )
    if tied or size * 2 <= len(done):
        return Verdict(
            agreed=False, majority=(), dissenters=tuple(r.peer_id for r in done), outcome=None
        )
    majority = tuple(r.peer_id for r in done if r.receipt and r.receipt.outcome == outcome)
    dissent = tuple(r.peer_id for r in done if r.receipt and r.receipt.outcome != outcome)
    return Verdict(agreed=False, majority=majority, dissenters=dissent, outcome=outcome)


@dataclass
class _Attempts:
    workers: list[Worker]
    next_index: int = 0
    replicas: list[Replica] = field(default_factory=list)

    def take(self) -> Worker | None:
        if self.next_index >= len(self.workers):
            return None
        worker = self.workers[self.next_index]
        self.next_index += 1
        return worker


async def run_replicas(
    open_stream: OpenStream,
    workers: Sequence[Worker],
    submit: Submit,
    replicas: int,
    on_update: Callable[[Replica], Awaitable[None]],
) -> list[Replica]:
    """Run ``submit`` on ``replicas`` workers at once, best first.

    A worker that is busy, unreachable or fails is replaced by the next one while
    any is left.  A refusal about the job itself (forbidden import, invalid module,
    oversize input...) ends everything: it raises JobRejectedError.  Cancelling the
    caller sends CANCEL to every worker still running the job.
    """
    attempts = _Attempts(list(workers))
    fatal: list[JobRejectedError] = []

    async def slot(cancel_all: trio.CancelScope) -> None:
        while (worker := attempts.take()) is not None:
            replica = Replica(worker.peer_id)
            attempts.replicas.append(replica)
            try:
                await _run_one(open_stream, worker, submit, replica, on_update)
            except JobRejectedError as exc:
                replica.refused, replica.refusal_code = str(exc), exc.code
                replica.state = SessionState.REFUSED
                await on_update(replica)
                if exc.code not in _TRY_ANOTHER:
                    fatal.append(exc)
                    cancel_all.cancel()
                    return
                continue
            except (trio.TooSlowError, UserError, RemoteError) as exc:
                replica.state = SessionState.FAILED
                replica.refused = str(exc) or type(exc).__name__
                await on_update(replica)
                continue
            return

    async with trio.open_nursery() as nursery:
        for _ in range(replicas):
            nursery.start_soon(slot, nursery.cancel_scope)
    if fatal:
        raise fatal[0]
    return attempts.replicas


async def _run_one(
    open_stream: OpenStream,
    worker: Worker,
    submit: Submit,
    replica: Replica,
    on_update: Callable[[Replica], Awaitable[None]],
) -> None:
    started = time.monotonic()
    worker_key = public_key_from_peer_id(worker.peer_id)
    try:
        stream = await open_stream(worker.peer_id, worker.addrs)
    except UserError:
        # py-libp2p now and then fails a stream's protocol handshake on a healthy
        # connection; one more try costs little and saves the replica.
        await trio.sleep(OPEN_RETRY_DELAY)
        stream = await open_stream(worker.peer_id, worker.addrs)
    session = RequesterSession(worker_key)
    channel = JobChannel(stream, session)
    try:
        await channel.send(session.submit(submit))
        with trio.fail_after(submit.spec.limits.wall_seconds + RESULT_MARGIN):
            while True:
                event = await channel.next_event()
                if isinstance(event, Reject):
                    raise event.exception()
                replica.state = session.state
                if isinstance(event, Progress):
                    replica.fetched_bytes = event.fetched or replica.fetched_bytes
                elif isinstance(event, Result):
                    replica.receipt, replica.receipt_data = (
                        event.receipt.receipt,
                        event.receipt.data,
                    )
                    replica.stdout = event.stdout
                    break
                await on_update(replica)
    finally:
        replica.elapsed_s = time.monotonic() - started
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
            if (cancel := session.cancel()) is not None:
                with contextlib.suppress(trio.BrokenResourceError, RemoteError):
                    await channel.send(cancel)
            await channel.aclose()
    await on_update(replica)
