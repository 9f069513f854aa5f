"""The worker side of the compute protocol: offers, admission, fetching, running, receipts.

One stream per request.  A requester either asks for the current offer (OFFER_REQUEST
-> OFFER) or submits a job:

    SUBMIT -> REJECT                       (refused before anything is fetched)
    SUBMIT -> ACCEPT -> PROGRESS* -> RESULT | REJECT

A CANCEL, or the requester closing its stream, stops the job wherever it is: the
pool kills the worker process if the module is running.  Every refusal is a REJECT
with a code (:class:`~p2pshare.proto.job.RejectCode`); nothing a requester sends can
do more than end its own stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import trio

from p2pshare.compute.channel import WorkerChannel
from p2pshare.compute.errors import ForbiddenImportError, InvalidModuleError, WorkerCrashedError
from p2pshare.compute.examples import example_module
from p2pshare.compute.imports import MAX_MODULE_SIZE, check_module
from p2pshare.compute.jobs import SandboxJob, sandbox_job, sign_result
from p2pshare.compute.pool import PoolConfig, WorkerPool, open_worker_pool
from p2pshare.errors import P2PShareError, RemoteError, leaf_errors
from p2pshare.metrics import METRICS
from p2pshare.proto.job import (
    MAX_INLINE_OUTPUT,
    Accept,
    JobRejectedError,
    JobState,
    OfferReply,
    OfferRequest,
    Progress,
    Reject,
    RejectCode,
    Result,
    Submit,
)
from p2pshare.proto.jobsession import NO_JOB
from p2pshare.proto.jobspec import JobLimits, JobSpec
from p2pshare.proto.offer import MAX_OFFER_LIFETIME, Offer, SignedOffer, sign_offer
from p2pshare.proto.ratelimit import PerKeyBuckets
from p2pshare.proto.receipt import JobStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from p2pshare.compute.jobs import InputSource, SandboxResult
    from p2pshare.config import ComputeConfig
    from p2pshare.identity import NodeKey
    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.cid import ContentId

log = logging.getLogger(__name__)

# A requester that opened a stream says what it wants at once.
FIRST_MESSAGE_TIMEOUT: Final = 10.0
# Offers live shorter than the protocol allows: free slots change quickly.
OFFER_LIFETIME: Final = min(120, MAX_OFFER_LIFETIME)
# Fetching the module and inputs is bounded too: a job's wall limit covers only the run.
FETCH_TIMEOUT: Final = 600.0
# Enough work to time, little enough to start a pool quickly (a few milliseconds).
_SPEED_PROBE_BYTES: Final = 1 << 20
# Verified modules kept in memory by content ID: a module run again is not fetched again.
MODULE_CACHE_BYTES: Final = 32 * 1024 * 1024
# Outcomes of modules the sandbox refused to start, and the refusal each becomes.
_NEVER_RAN: Final = {
    JobStatus.INVALID_MODULE: RejectCode.INVALID_MODULE,
    JobStatus.FORBIDDEN_IMPORT: RejectCode.FORBIDDEN_IMPORT,
}


@dataclass(frozen=True)
class Fetched:
    """Where a job's content came from: its size, and how much of it crossed the network."""

    size: int
    network_bytes: int


class Fetch(Protocol):
    """Put the verified single-file content ``cid`` at ``dest``.

    Raises JobRejectedError (code ``oversize``) when the content is larger than
    ``max_bytes``, and any p2pshare error when it cannot be had.
    """

    async def __call__(
        self, cid: ContentId, dest: Path, *, max_bytes: int, hints: Sequence[str]
    ) -> Fetched: ...


class ModuleCache:
    """The most recently used modules, by content ID, up to a total size."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._modules: OrderedDict[ContentId, bytes] = OrderedDict()
        self._size = 0

    def get(self, cid: ContentId) -> bytes | None:
        module = self._modules.get(cid)
        if module is not None:
            self._modules.move_to_end(cid)
        return module

    def put(self, cid: ContentId, module: bytes) -> None:
        if cid in self._modules or len(module) > self._max_bytes:
            return
        self._modules[cid] = module
        self._size += len(module)
        while self._size > self._max_bytes:
            _, evicted = self._modules.popitem(last=False)
            self._size -= len(evicted)


class OutputStore(Protocol):
    """Where a worker keeps job outputs: the node's store, under its quota.

    ``keep`` hashes the output and runs in a worker thread, one at a time; the others
    are quick and run on the event loop.
    """

    def make_room(self, nbytes: int) -> bool:
        """Reclaim what may be reclaimed; whether ``nbytes`` more now fit in the quota."""
        ...

    def keep(self, path: Path, requester: str) -> ContentId:
        """Store the output at ``path``, for ``requester`` alone."""
        ...

    def delivered(self, cid: ContentId, requester: str) -> None:
        """``requester`` has the output (it came with the receipt): it may be reclaimed."""
        ...


def load_per_cpu() -> float:
    """The 1-minute load average divided by the number of CPUs."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def _refusal(code: str, message: str) -> JobRejectedError:
    return JobRejectedError(code, message)


class ComputeService:
    """Serve the compute protocol with a pool of sandboxed worker processes."""

    def __init__(
        self,
        settings: ComputeConfig,
        key: NodeKey,
        *,
        fetch: Fetch,
        outputs: OutputStore,
        work_dir: Path,
        announce: Callable[[], Awaitable[None]],
        load: Callable[[], float] = load_per_cpu,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._key = key
        self._fetch = fetch
        self._outputs = outputs
        # Output bytes promised to admitted jobs (their max_output), not stored yet.
        self._reserved = 0
        self._store_lock = trio.Lock()
        self._work_dir = work_dir
        self._announce = announce
        self._load = load
        self._clock = clock
        self._pool: WorkerPool | None = None
        self._running = 0
        self._changed = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._rates = _job_rates(settings.jobs_per_minute)
        self.speed = 0
        self.jobs_done = 0
        self._modules = ModuleCache(MODULE_CACHE_BYTES)

    # -- the offer

    @property
    def running(self) -> int:
        return self._running

    def limits(self) -> JobLimits:
        s = self.settings
        return JobLimits(
            fuel=s.max_fuel, memory=s.max_memory, wall_seconds=s.max_wall, max_output=s.max_output
        )

    def free_slots(self) -> int:
        if self._pool is None or not self.settings.enabled:
            return 0
        if self.settings.max_load and self._load() >= self.settings.max_load:
            return 0
        return max(0, self.settings.slots - self._running)

    def offer(self) -> SignedOffer:
        """The current offer, signed, valid for a couple of minutes."""
        s = self.settings
        return sign_offer(
            Offer(
                worker=self._key.public_key,
                limits=self.limits(),
                max_input=s.max_input,
                slots=s.slots,
                free=self.free_slots(),
                speed=self.speed,
                expires=int(self._clock()) + OFFER_LIFETIME,
            ),
            self._key,
        )

    def status(self) -> dict[str, object]:
        s = self.settings
        return {
            "enabled": s.enabled,
            "ready": self._pool is not None,
            "slots": s.slots,
            "running": self._running,
            "free": self.free_slots(),
            "max_fuel": s.max_fuel,
            "max_memory": s.max_memory,
            "max_wall": s.max_wall,
            "max_output": s.max_output,
            "max_input": s.max_input,
            "max_load": s.max_load,
            "jobs_per_minute": s.jobs_per_minute,
            "load_per_cpu": round(self._load(), 3),
            "speed_fuel_per_s": self.speed,
            "jobs_done": self.jobs_done,
        }

    def configure(self, **changes: object) -> None:
        """Change the offer while running; new worker processes start if they must."""
        old = self.settings
        new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
        self.settings = new
        if new.jobs_per_minute != old.jobs_per_minute:
            self._rates = _job_rates(new.jobs_per_minute)
        if _pool_config(new) != _pool_config(old) or new.enabled != old.enabled:
            self._changed.set()

    # -- the pool's life

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a worker pool matching the offer until cancelled; announce while it is on.

        Reports started at once: workers take a second to start, and the node is
        ready meanwhile (jobs are refused as busy until they are up).
        """
        await trio.to_thread.run_sync(self._clear_work_dir)
        task_status.started()
        while True:
            self._changed = trio.Event()
            if not self.settings.enabled:
                await self._changed.wait()
                continue
            config = _pool_config(self.settings)
            async with open_worker_pool(
                dataclasses.replace(config, work_dir=self._work_dir)
            ) as pool:
                self.speed = await _measure_speed(pool)
                self._pool = pool
                log.info(
                    "compute on: %d slots, %.2g fuel/s per slot", config.slots, float(self.speed)
                )
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._announce_while_on)
                        await self._changed.wait()
                        # No new jobs from here on; running ones finish on this pool.
                        self._pool = None
                        await self._idle.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    self._pool = None

    async def _announce_while_on(self) -> None:
        try:
            await self._announce()
        except Exception:
            log.exception("announcing compute failed")

    def _clear_work_dir(self) -> None:
        # Job directories of a daemon that was killed: nothing in them is needed.
        shutil.rmtree(self._work_dir, ignore_errors=True)
        self._work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- one stream

    async def handle(self, stream: ByteStream, peer: str) -> None:
        """Serve one compute-protocol stream from ``peer``."""
        channel = WorkerChannel(stream)
        try:
            with trio.fail_after(FIRST_MESSAGE_TIMEOUT):
                first = await channel.next_event()
            if isinstance(first, OfferRequest):
                await channel.answer(self._offer_reply())
            elif isinstance(first, Submit):
                await self._serve_job(channel, peer, first)
        except trio.TooSlowError:
            log.info("compute stream from %s sent nothing in time; closed", peer)
        except RemoteError as exc:
            log.info("compute stream from %s: %s", peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await channel.aclose()

    def _offer_reply(self) -> OfferReply | Reject:
        if not self.settings.enabled:
            # Withdrawn: requesters drop this node rather than list it with 0 free slots.
            return Reject(NO_JOB, RejectCode.NOT_OFFERING, "this node does not offer compute")
        return OfferReply(self.offer().data)

    def _unavailable(self) -> JobRejectedError | None:
        if not self.settings.enabled:
            return _refusal(RejectCode.NOT_OFFERING, "this node does not offer compute")
        if self._pool is None:
            return _refusal(RejectCode.BUSY, "this node's worker processes are starting")
        return None

    def _admit(self, peer: str, spec: JobSpec) -> JobRejectedError | None:
        if (refusal := self._unavailable()) is not None:
            return refusal
        if not self._rates.take(peer, trio.current_time()):
            return _refusal(
                RejectCode.RATE_LIMITED,
                f"more than {self.settings.jobs_per_minute:g} jobs a minute from one peer",
            )
        over = spec.limits.exceeding(self.limits())
        if over:
            return _refusal(
                RejectCode.LIMIT_EXCEEDS_OFFER,
                "the job asks for more than this worker offers: " + ", ".join(over),
            )
        if self._running >= self.settings.slots:
            return _refusal(RejectCode.BUSY, f"all {self.settings.slots} slots are busy")
        if self.settings.max_load and (load := self._load()) >= self.settings.max_load:
            return _refusal(RejectCode.BUSY, f"the machine is busy (load {load:.2f} per CPU)")
        return None

    async def _serve_job(self, channel: WorkerChannel, peer: str, submit: Submit) -> None:
        job = submit.job_id
        refusal = self._admit(peer, submit.spec)
        if refusal is not None:
            await channel.answer(Reject(job, refusal.code, str(refusal)))
            return
        pool = self._pool
        assert pool is not None
        self._running += 1
        self._idle = trio.Event()
        directory = self._work_dir / f"{job.hex()[:16]}-{submit.nonce.hex()}"
        max_output = submit.spec.limits.max_output
        self._reserved += max_output
        try:
            if not self._room_for_outputs():
                message = (
                    f"this worker has no room for {max_output} bytes of output within its "
                    "store quota; ask for a smaller --max-output or another worker"
                )
                await channel.answer(Reject(job, RejectCode.NO_SPACE, message))
                return
            await channel.answer(Accept(job))
            outcome = await self._run_cancellable(channel, peer, submit, pool, directory)
            METRICS.job_run("result" if isinstance(outcome, Result) else outcome.code)
            if isinstance(outcome, Result):
                self.jobs_done += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await channel.answer(outcome)
                self._note_delivered(outcome, peer)
        finally:
            self._reserved -= max_output
            self._running -= 1
            if self._running == 0:
                self._idle.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))

    def _room_for_outputs(self) -> bool:
        # Checked before anything is fetched, for every job running at once: a
        # requester cannot fill the worker's disk with outputs.  On the event loop, as
        # every gc is, so no two reclaim at once.
        return self._outputs.make_room(self._reserved)

    def _note_delivered(self, outcome: Result | Reject, peer: str) -> None:
        if isinstance(outcome, Result) and outcome.stdout is not None:
            output = outcome.receipt.receipt.output
            if output is not None:
                self._outputs.delivered(output, peer)

    async def _run_cancellable(
        self,
        channel: WorkerChannel,
        peer: str,
        submit: Submit,
        pool: WorkerPool,
        directory: Path,
    ) -> Result | Reject:
        job = submit.job_id
        outcome: Result | Reject = Reject(job, RejectCode.CANCELLED, "the requester cancelled")

        async def watch_requester(scope: trio.CancelScope) -> None:
            # Anything but silence from the requester ends the job: CANCEL, EOF, garbage.
            try:
                await channel.next_event()
            except RemoteError as exc:
                log.info("unexpected message from %s during job %s: %s", peer, job.hex(), exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            log.info("job %s cancelled by %s", job.hex()[:16], peer)
            scope.cancel()

        async def work(scope: trio.CancelScope) -> None:
            nonlocal outcome
            try:
                outcome = await self._execute(channel, peer, submit, pool, directory)
            except JobRejectedError as exc:
                outcome = Reject(job, exc.code, _first_line(str(exc)))
            except (WorkerCrashedError, P2PShareError, OSError) as exc:
                log.warning("job %s failed on this node: %s", job.hex()[:16], exc)
                outcome = Reject(job, RejectCode.INTERNAL, _first_line(str(exc)))
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_requester, nursery.cancel_scope)
                nursery.start_soon(work, nursery.cancel_scope)
        except BaseExceptionGroup as group:
            raise leaf_errors(group)[0] from None
        return outcome

    async def _execute(
        self,
        channel: WorkerChannel,
        peer: str,
        submit: Submit,
        pool: WorkerPool,
        directory: Path,
    ) -> Result:
        spec = submit.spec
        job = submit.job_id
        await trio.to_thread.run_sync(lambda: directory.mkdir(mode=0o700))
        await channel.answer(Progress(job, JobState.FETCHING, None, 0))
        module, stdin, inputs, network = await self._fetch_job_content(spec, peer, directory)
        await channel.answer(Progress(job, JobState.COMPILING, None, network))
        try:
            check_module(module)
        except ForbiddenImportError as exc:
            raise _refusal(RejectCode.FORBIDDEN_IMPORT, str(exc)) from None
        except InvalidModuleError as exc:
            raise _refusal(RejectCode.INVALID_MODULE, str(exc)) from None
        await channel.answer(Progress(job, JobState.RUNNING, None, network))
        result = await pool.run_job(sandbox_job(spec, module=module, stdin=stdin, inputs=inputs))
        if result.status in _NEVER_RAN:
            # About the module itself, with its reason (no _start...), which a receipt
            # cannot carry: every worker would say the same.
            raise _refusal(_NEVER_RAN[result.status], result.detail)
        log.info(
            "job %s from %s: %s, %d fuel, %d bytes out",
            job.hex()[:16],
            peer,
            result.status.value,
            result.fuel_used,
            len(result.stdout),
        )
        output = await self._keep_output(directory, job, result, peer)
        inline = result.stdout if len(result.stdout) <= MAX_INLINE_OUTPUT else None
        return Result(sign_result(spec, result, self._key, output), inline)

    async def _fetch_job_content(
        self, spec: JobSpec, peer: str, directory: Path
    ) -> tuple[bytes, InputSource, dict[str, InputSource], int]:
        """The module, stdin and inputs of a job, within its input budget, and how
        many bytes came over the network."""
        budget = self.settings.max_input
        network = 0

        async def get(cid: ContentId, name: str, limit: int) -> Path:
            nonlocal budget, network
            dest = directory / name
            with trio.fail_after(FETCH_TIMEOUT):
                fetched = await self._fetch(cid, dest, max_bytes=min(limit, budget), hints=[peer])
            budget -= fetched.size
            network += fetched.network_bytes
            return dest

        try:
            module = self._modules.get(spec.module)
            if module is None:
                path = await get(spec.module, "module.wasm", MAX_MODULE_SIZE)
                module = await trio.to_thread.run_sync(path.read_bytes)
                self._modules.put(spec.module, module)
            else:
                budget -= len(module)
            stdin: InputSource = b""
            if spec.stdin is not None:
                stdin = await get(spec.stdin, "stdin", budget)
            inputs: dict[str, InputSource] = {}
            for index, entry in enumerate(spec.inputs):
                inputs[entry.path] = await get(entry.cid, f"input-{index}", budget)
        except trio.TooSlowError:
            raise _refusal(
                RejectCode.INTERNAL, "fetching the job's content took too long"
            ) from None
        return module, stdin, inputs, network

    async def _keep_output(
        self, directory: Path, job: bytes, result: SandboxResult, requester: str
    ) -> ContentId:
        path = directory / f"job-{job.hex()[:16]}.out"
        await trio.to_thread.run_sync(path.write_bytes, result.stdout)
        async with self._store_lock:
            return await trio.to_thread.run_sync(self._outputs.keep, path, requester)


def _job_rates(per_minute: float) -> PerKeyBuckets:
    # Bursts of up to a minute's worth, and at least one job whatever the rate.
    return PerKeyBuckets(rate=per_minute / 60, burst=max(1.0, per_minute))


def _pool_config(settings: ComputeConfig) -> PoolConfig:
    return PoolConfig(
        slots=settings.slots, max_memory=settings.max_memory, max_output=settings.max_output
    )


async def _measure_speed(pool: WorkerPool) -> int:
    """Fuel per second of one slot, from a short run of a byte-crunching example."""
    module = await trio.to_thread.run_sync(example_module, "fnv1a")
    # Within the pool's limits: the default job limits exceed a small [compute] offer.
    limits = JobLimits(memory=pool.config.max_memory, max_output=pool.config.max_output)
    result = await pool.run_job(
        SandboxJob(module=module, seed=bytes(32), limits=limits, stdin=bytes(_SPEED_PROBE_BYTES))
    )
    return int(result.fuel_used / result.elapsed) if result.elapsed > 0 else 0


def _first_line(text: str) -> str:
    return text.splitlines()[0][:1000] if text else ""
