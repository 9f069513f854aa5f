"""A pool of pre-started worker processes, with an async API for trio.

One worker per slot runs one job at a time.  Starting a worker costs about as much
as importing wasmtime (over 100 ms), so workers are started ahead of time and
reused: a trivial job's round trip is a few milliseconds.  Whatever ends a job
badly ends its worker too: the pool kills it and starts another, so the next job
always finds a clean process.

The parent's hard kill is the last line of defence.  A job that does not stop
within its wall-clock limit plus :attr:`PoolConfig.kill_grace` -- because a host
call blocked, where the epoch deadline cannot reach -- is killed with SIGKILL and
reported as ``timeout``; so is one whose compiling and preparing outlast
:attr:`PoolConfig.prepare_timeout`.  Cancelling :meth:`WorkerPool.run_job` (a
CANCEL from the requester, Ctrl-C) kills the worker the same way.

The pool never imports wasmtime: only its worker processes do.

Typical use::

    async with open_worker_pool(PoolConfig(slots=2)) as pool:
        result = await pool.run_job(SandboxJob(module=wasm, seed=job_id, limits=limits))
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from p2pshare.compute.errors import SandboxError, WorkerCrashedError, WorkerStartError
from p2pshare.compute.jobs import SandboxResult, refused
from p2pshare.compute.worker import (
    SPILL_BYTES,
    decode_reply,
    encode_request,
    max_reply_size,
    result_from_reply,
)
from p2pshare.errors import LocalProtocolError, leaf_errors
from p2pshare.proto.framing import HEADER_SIZE, FrameDecoder, FrameTooLargeError
from p2pshare.proto.job import JobState
from p2pshare.proto.jobspec import DEFAULT_MEMORY, DEFAULT_OUTPUT_BYTES
from p2pshare.proto.receipt import JobStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from p2pshare.compute.jobs import InputSource, SandboxJob

# A worker that was just taken from the idle set answers a job at once; one that does
# not within this time is stuck and replaced, and the job goes to another.
ACK_TIMEOUT: Final = 10.0
# Workers that die before acknowledging a job (killed from outside while idle) are
# skipped; after this many in a row something is wrong with the machine.
_ATTEMPTS: Final = 3
_RESPAWN_DELAY: Final = 0.1
_MAX_RESPAWN_DELAY: Final = 30.0
_READ_SIZE: Final = 1 << 20


@dataclass(frozen=True)
class PoolConfig:
    """How many workers, and the most any job may ask of them.

    ``max_memory`` and ``max_output`` size each worker's rlimits, so a job above
    them is refused by :meth:`WorkerPool.run_job` (a worker's offer says the same).
    """

    slots: int = 1
    max_memory: int = DEFAULT_MEMORY
    max_output: int = DEFAULT_OUTPUT_BYTES
    work_dir: Path | None = None
    nice: int = 10
    prepare_timeout: float = 60.0
    kill_grace: float = 1.0
    start_timeout: float = 30.0
    python: str = sys.executable


class _WorkerGoneError(Exception):
    """The worker's pipes closed: the process is dead or dying."""


class _NotStartedError(Exception):
    """The worker failed before acknowledging the job: try another worker."""


class _Worker:
    def __init__(self, process: trio.Process, max_output: int, scratch: Path) -> None:
        self.process = process
        # The worker's job directories live here; removed when the worker ends, since
        # a killed worker cannot clean up after itself.
        self.scratch = scratch
        self.max_output = max_output
        self.decoder = FrameDecoder(max_reply_size(max_output))
        self.exited = trio.Event()

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and self.process.poll() is None

    async def send(self, payload: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            await stdin.send_all(len(payload).to_bytes(HEADER_SIZE, "big"))
            await stdin.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _WorkerGoneError from exc

    async def receive(self) -> dict[str, object]:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            try:
                frame = self.decoder.next_frame()
            except FrameTooLargeError as exc:
                raise SandboxError(f"worker {self.process.pid}: {exc}") from exc
            if frame is not None:
                return decode_reply(frame, self.max_output)
            try:
                data = await stdout.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _WorkerGoneError from exc
            if not data:
                raise _WorkerGoneError
            self.decoder.feed(bytes(data))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


async def _remove(directory: Path) -> None:
    await trio.to_thread.run_sync(functools.partial(shutil.rmtree, directory, ignore_errors=True))


async def _close_pipes(process: trio.Process) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            await stream.aclose()


def _worker_environment() -> dict[str, str]:
    # Nothing of the daemon's environment (tokens, proxies) reaches the worker.
    # MALLOC_ARENA_MAX: glibc would reserve a 64 MiB arena per thread, all of which
    # counts against RLIMIT_AS.
    return {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}


def _killed_result(detail: str) -> SandboxResult:
    return refused(JobStatus.TIMEOUT, detail)


class WorkerPool:
    """Pre-started worker processes; obtain one with :func:`open_worker_pool`."""

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        if config.slots < 1:
            raise LocalProtocolError("a worker pool has at least one slot")
        self.config = config
        self._nursery = nursery
        self._idle_send, self._idle_receive = trio.open_memory_channel[_Worker](math.inf)
        self._workers: set[_Worker] = set()
        self._closing = False
        self.started = 0

    @property
    def pids(self) -> list[int]:
        """The process IDs of the live workers (for monitoring and tests)."""
        return sorted(worker.process.pid for worker in self._workers if worker.alive)

    def _command(self, scratch: Path) -> list[str]:
        config = self.config
        # -I: no user site-packages, no PYTHON* variables, and the working directory
        # is not on sys.path, so no stray module can stand in for ours.
        command = [config.python, "-I", "-m", "p2pshare.compute.worker"]
        command += ["--max-memory", str(config.max_memory)]
        command += ["--max-output", str(config.max_output), "--nice", str(config.nice)]
        command += ["--work-dir", os.fspath(scratch)]
        return command

    async def _spawn(self) -> _Worker:
        try:
            scratch = Path(
                await trio.to_thread.run_sync(
                    functools.partial(
                        tempfile.mkdtemp, prefix="p2pshare-worker-", dir=self.config.work_dir
                    )
                )
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot create a compute work directory: {exc}") from exc
        try:
            process = await trio.lowlevel.open_process(
                self._command(scratch),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_worker_environment(),
                cwd="/",
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await _remove(scratch)
            if isinstance(exc, OSError):
                raise WorkerStartError(f"cannot start a compute worker: {exc}") from exc
            raise
        worker = _Worker(process, self.config.max_output, scratch)
        try:
            with trio.fail_after(self.config.start_timeout):
                message = await worker.receive()
            if message.get("t") != "ready":
                raise SandboxError(f"unexpected first message {message.get('t')!r}")
        except BaseException as exc:
            worker.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                await _close_pipes(process)
                await _remove(scratch)
            if isinstance(exc, (trio.TooSlowError, _WorkerGoneError, SandboxError)):
                raise WorkerStartError(
                    "a compute worker did not start (see its error output above); check that "
                    f"wasmtime is installed for {self.config.python}"
                ) from exc
            raise
        self.started += 1
        self._workers.add(worker)
        self._nursery.start_soon(self._watch, worker)
        return worker

    async def _watch(self, worker: _Worker) -> None:
        """Wait for a worker to end, clean up after it, and put another in its place.

        Every worker has a watcher, so this is the one place its pipes and scratch
        directory are released, whatever ended it (even the pool closing).
        """
        try:
            await worker.process.wait()
        finally:
            with trio.CancelScope(shield=True):
                worker.kill()
                await worker.process.wait()
                worker.exited.set()
                self._workers.discard(worker)
                await _close_pipes(worker.process)
                await _remove(worker.scratch)
        if not self._closing:
            await self._replace()

    async def _replace(self) -> None:
        delay = _RESPAWN_DELAY
        while not self._closing:
            try:
                worker = await self._spawn()
            except WorkerStartError:
                # Out of memory or processes for a moment: try again, more slowly.
                await trio.sleep(delay)
                delay = min(2 * delay, _MAX_RESPAWN_DELAY)
                continue
            self._give_back(worker)
            return

    async def _start(self) -> None:
        """Start every slot's worker; WorkerStartError if any cannot start."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.config.slots):
                    nursery.start_soon(self._start_one)
        except BaseExceptionGroup as group:
            _raise_unwrapped(group)

    async def _start_one(self) -> None:
        self._idle_send.send_nowait(await self._spawn())

    async def aclose(self) -> None:
        """Kill every worker and stop starting new ones; the watchers clean up."""
        self._closing = True
        self._idle_send.close()
        for worker in list(self._workers):
            worker.kill()
        # Watchers finish their (shielded) clean-up; replacements still starting are
        # cancelled, and _spawn kills their process.
        self._nursery.cancel_scope.cancel()

    async def _take(self) -> _Worker:
        while True:
            try:
                worker = await self._idle_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise SandboxError("the compute worker pool is closed") from None
            if worker.alive:
                return worker
            # Died while idle; its watcher is already starting a replacement.

    async def run_job(
        self, job: SandboxJob, *, on_state: Callable[[JobState], None] | None = None
    ) -> SandboxResult:
        """Run ``job`` on the next free worker; every way a job ends is a result.

        ``on_state`` hears COMPILING when a worker took the job and RUNNING when the
        module starts.  Raises LocalProtocolError for limits above the pool's,
        WorkerCrashedError if the worker died on its own, SandboxError if the host
        failed (an input file could not be read).
        """
        limits = job.limits
        if limits.memory > self.config.max_memory or limits.max_output > self.config.max_output:
            raise LocalProtocolError(
                f"the job's limits (memory {limits.memory}, output {limits.max_output}) exceed "
                f"the workers' (memory {self.config.max_memory}, output "
                f"{self.config.max_output})"
            )
        request, spill_dir = await trio.to_thread.run_sync(_spill, job, self.config.work_dir)
        try:
            for _attempt in range(_ATTEMPTS):
                worker = await self._take()
                try:
                    return await self._run_on(worker, request, job, on_state)
                except _NotStartedError:
                    continue
        finally:
            if spill_dir is not None:
                with trio.CancelScope(shield=True):
                    await _remove(spill_dir)
        raise WorkerCrashedError(
            f"{_ATTEMPTS} compute workers in a row died before they could take a job"
        )

    async def _run_on(
        self,
        worker: _Worker,
        request: bytes,
        job: SandboxJob,
        on_state: Callable[[JobState], None] | None,
    ) -> SandboxResult:
        reusable = False
        acknowledgement: dict[str, object] | None = None
        try:
            with trio.move_on_after(ACK_TIMEOUT):
                try:
                    await worker.send(request)
                    acknowledgement = await worker.receive()
                except _WorkerGoneError:
                    raise _NotStartedError from None
            if not acknowledgement or acknowledgement.get("t") != "state":
                raise _NotStartedError
            if on_state is not None:
                on_state(JobState.COMPILING)
            result, reusable = await self._follow(worker, job, on_state)
            if isinstance(result, SandboxError):
                raise result
            return result
        except _WorkerGoneError:
            status = await worker.process.wait()
            if status == -signal.SIGXCPU:
                return _killed_result("the job used up the CPU time its wall-clock limit allows")
            raise WorkerCrashedError(
                f"compute worker {worker.process.pid} died (status {status}) during a job"
            ) from None
        finally:
            if reusable:
                self._give_back(worker)
            else:
                # Stuck, crashed, timed out or cancelled: never reuse that process.
                worker.kill()

    def _give_back(self, worker: _Worker) -> None:
        try:
            self._idle_send.send_nowait(worker)
        except trio.ClosedResourceError:
            worker.kill()  # the pool closed while this worker was busy

    async def _follow(
        self, worker: _Worker, job: SandboxJob, on_state: Callable[[JobState], None] | None
    ) -> tuple[SandboxResult | SandboxError, bool]:
        """Read the worker's messages up to the result, killing it at the deadlines.

        Returns the outcome and whether the worker can take another job.
        """
        config = self.config
        deadline = trio.current_time() + config.prepare_timeout
        running = False
        while True:
            with trio.move_on_at(deadline):
                message = await worker.receive()
                kind = message["t"]
                if kind == "result":
                    return result_from_reply(message, job.limits.max_output), True
                if kind == "error":
                    # The host failed (an unreadable input); the worker itself is fine.
                    return SandboxError(str(message.get("message"))), True
                if kind == "state" and message.get("state") == "running" and not running:
                    running = True
                    deadline = trio.current_time() + job.limits.wall_seconds + config.kill_grace
                    if on_state is not None:
                        on_state(JobState.RUNNING)
                continue
            if running:
                return _killed_result(
                    f"the job did not stop at its wall-clock limit of {job.limits.wall_seconds} "
                    "s and its worker was killed"
                ), False
            return _killed_result(
                f"compiling and preparing the job took longer than {config.prepare_timeout} s"
            ), False


def _spill(job: SandboxJob, work_dir: Path | None) -> tuple[bytes, Path | None]:
    """The request for ``job``, with large in-memory sources written to files.

    Keeps big inputs out of the pipe and out of the worker's memory, which is what
    its RLIMIT_DATA is sized for.  Returns the request and the directory of the
    files written (None if none were), which the caller removes.
    """
    spill_dir: Path | None = None

    def spill(name: str, source: InputSource) -> InputSource:
        nonlocal spill_dir
        if isinstance(source, Path) or len(source) <= SPILL_BYTES:
            return source
        if spill_dir is None:
            spill_dir = Path(tempfile.mkdtemp(prefix="p2pshare-spill-", dir=work_dir))
        path = spill_dir / name
        path.write_bytes(source)
        return path

    try:
        spilled = replace(
            job,
            stdin=spill("stdin", job.stdin),
            inputs={
                guest: spill(f"input-{index}", source)
                for index, (guest, source) in enumerate(job.inputs.items())
            },
        )
        return encode_request(spilled), spill_dir
    except BaseException:
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
        raise


@asynccontextmanager
async def open_worker_pool(config: PoolConfig | None = None) -> AsyncIterator[WorkerPool]:
    """Start ``config.slots`` workers; on exit, kill them all.

    Raises WorkerStartError when the workers cannot start at all.
    """
    config = config or PoolConfig()
    if config.work_dir is not None and not config.work_dir.is_dir():
        raise WorkerStartError(f"compute work directory {config.work_dir} does not exist")
    try:
        async with trio.open_nursery() as nursery:
            pool = WorkerPool(config, nursery)
            try:
                await pool._start()  # noqa: SLF001 -- the pool's own factory
                yield pool
            finally:
                await pool.aclose()
    except BaseExceptionGroup as group:
        # The pool's own tasks do not fail, so a group holds the one error of the
        # caller's block (or of starting): give it back unwrapped, as it was raised.
        _raise_unwrapped(group)


def _raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the single error inside ``group`` (or its first WorkerStartError), or ``group``."""
    errors = leaf_errors(group)
    starting = [error for error in errors if isinstance(error, WorkerStartError)]
    if len(errors) == 1:
        error = errors[0]
    elif starting and len(starting) == len(errors):
        error = starting[0]
    else:
        raise group
    # Leave the error's own chaining as it was, instead of chaining it to the group.
    cause, context, suppress = error.__cause__, error.__context__, error.__suppress_context__
    try:
        raise error
    finally:
        error.__cause__, error.__context__ = cause, context
        error.__suppress_context__ = suppress
