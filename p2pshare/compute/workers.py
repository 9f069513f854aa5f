"""Finding workers for a job: their signed offers, and which of them fit it best.

* :func:`ask_offer` fetches and checks one worker's signed offer;
* :func:`collect_offers` asks many at once;
* :func:`rank_workers` keeps the workers whose offer fits a job and orders them,
  those already holding the job's inputs first.

The streams come from the caller (:data:`OpenStream`); the clock is passed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

import trio

from p2pshare.compute.channel import JobChannel
from p2pshare.errors import RemoteError, UserError
from p2pshare.proto.job import OfferReply, Reject, RejectCode
from p2pshare.proto.jobsession import RequesterSession
from p2pshare.proto.keys import public_key_from_peer_id
from p2pshare.proto.offer import verify_offer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.jobspec import JobLimits
    from p2pshare.proto.offer import Offer

    # Opens a compute-protocol stream to a peer, dialing the given addresses if needed.
    OpenStream: TypeAlias = Callable[[str, Sequence[str]], Awaitable[ByteStream]]

OFFER_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class Worker:
    """A worker found in the DHT, with the offer it signed."""

    peer_id: str
    addrs: tuple[str, ...]
    offer: Offer
    held_inputs: int = 0


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
