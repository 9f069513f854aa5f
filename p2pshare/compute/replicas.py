"""Running one job on k workers at once, and comparing what they answer.

* :func:`run_replicas` submits a job to k workers at once, replacing workers that
  are busy or unreachable, and returns every replica's verified receipt;
* :func:`compare` says whether the receipts agree and who disagreed.

Each replica is a :class:`p2pshare.proto.jobsession.RequesterSession` over a stream
the caller opens; nothing here touches files.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from p2pshare.compute.channel import JobChannel
from p2pshare.compute.errors import JobFailedError
from p2pshare.errors import RemoteError, UserError
from p2pshare.proto.job import JobRejectedError, Progress, Reject, RejectCode, Result
from p2pshare.proto.jobsession import RequesterSession, SessionState
from p2pshare.proto.keys import public_key_from_peer_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from p2pshare.compute.workers import OpenStream, Worker
    from p2pshare.control.server import Emit
    from p2pshare.proto.job import Submit
    from p2pshare.proto.receipt import JobStatus, Receipt

# Fetching a job's content is bounded by the worker (600 s); a result comes within
# that, the job's wall limit, and this margin for compiling and storing the output.
RESULT_MARGIN: Final = 660.0
CANCEL_GRACE: Final = 2.0
# Seconds between progress events while replicas run (see JobWatch.heartbeat).
HEARTBEAT_INTERVAL: Final = 1.0
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


@dataclass
class JobWatch:
    """What compute_run tells its client while the replicas run.

    Each replica's changes, and a heartbeat, go out as ``running`` progress events;
    replicas report at once, but the control stream takes one event at a time.
    """

    emit: Emit
    job: bytes
    _emitting: trio.Lock = field(default_factory=trio.Lock, init=False)

    async def run_replicas(
        self, open_stream: OpenStream, workers: Sequence[Worker], submit: Submit, replicas: int
    ) -> list[Replica]:
        """:func:`run_replicas`, watched; a refusal of the job itself is a JobFailedError."""
        refused: JobRejectedError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.heartbeat)
            try:
                done = await run_replicas(open_stream, workers, submit, replicas, self.on_update)
            except JobRejectedError as exc:
                # Raised inside the nursery it would come out wrapped in an ExceptionGroup.
                refused = exc
            nursery.cancel_scope.cancel()
        if refused is not None:
            raise JobFailedError(f"the job was refused: {refused}")
        return done

    async def on_update(self, replica: Replica) -> None:
        await self._running({"worker": replica.as_dict()})

    async def heartbeat(self) -> None:
        # The control server sees its client go away (Ctrl-C) only when it sends:
        # a word every second ends the job, and CANCELs it on the workers, at once.
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._running({})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise JobFailedError("the client went away; job cancelled") from None

    async def _running(self, extra: dict[str, Any]) -> None:
        async with self._emitting:
            await self.emit("progress", {"phase": "running", "job_id": self.job.hex()} | extra)
