"""The compute worker process: ``python -I -m p2pshare.compute.worker``.

A worker runs jobs one at a time in a :class:`~p2pshare.compute.sandbox.Sandbox`
and is started, fed and killed by :mod:`p2pshare.compute.pool`.  It exists so that
nothing a job does -- a wasmtime bug, a host call that blocks, memory the host
side allocates -- can take the daemon down: the daemon can always kill it.

Before it reports READY the worker imports wasmtime, runs a warm-up job (so the
first real job pays neither imports nor lazy initialisation) and then confines
itself: RLIMIT_DATA (the memory it can actually write: heap, thread stacks and
wasm linear memory, but not wasmtime's address-space reservations), a coarse
RLIMIT_AS, RLIMIT_NOFILE, no core dumps, a lower priority, and death with its
parent (a watchdog thread waits on the parent process).  Each job sets RLIMIT_CPU
to the CPU time the job may still use.

Wire format, both directions: frames of :mod:`p2pshare.proto.framing` holding a
msgpack map with a type ``"t"``:

* parent -> worker: ``job`` {module, seed, limits, args, stdin, inputs}; a source
  (stdin or an input) is ``[0, bytes]`` or ``[1, host path]``.
* worker -> parent: ``ready`` {pid} once; per job ``state`` {"compiling"} at once
  (the acknowledgement), ``state`` {"running"} when the module starts, then
  ``result`` {status, exit, fuel, stdout, stderr, detail, elapsed}, or ``error``
  {message} when the host failed (the worker keeps serving).

The worker exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import resource
import select
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from p2pshare.compute.errors import SandboxError
from p2pshare.compute.jobs import MAX_STDERR, InputSource, SandboxJob, SandboxResult
from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.canonical import expect_bytes, expect_int, expect_list, expect_str, pack, unpack
from p2pshare.proto.framing import HEADER_SIZE, FrameDecoder
from p2pshare.proto.job import JobState
from p2pshare.proto.jobspec import MAX_OUTPUT_BYTES, JobLimits
from p2pshare.proto.receipt import JobStatus

if TYPE_CHECKING:
    from p2pshare.compute.sandbox import Sandbox

# Requests carry the module (at most 8 MiB) and sources up to SPILL_BYTES each; the
# pool turns larger sources into files, so a worker never buffers big inputs.
SPILL_BYTES: Final = 64 * 1024
MAX_REQUEST: Final = 128 * 1024 * 1024
_REPLY_OVERHEAD: Final = 64 * 1024
# Writable memory a worker may use beyond its baseline and the job's linear memory:
# compiling a large module, the stdout copies of the reply, slack.
DATA_HEADROOM: Final = 256 * 1024 * 1024
# Address space on top of that: wasmtime reserves 4 GiB plus guard regions per linear
# memory (PROT_NONE, not backed); two stores may overlap while one is torn down.
ADDRESS_HEADROOM: Final = 2 * (4 * 1024**3 + 4 * 1024**3)
# Compiled modules in the cache hold a descriptor each (their memory image); the
# guest's open files take the rest.
MAX_OPEN_FILES: Final = 128
# CPU time a job may use beyond its wall-clock limit: compiling and preparing inputs.
CPU_ALLOWANCE_SECONDS: Final = 60
_PR_SET_NO_NEW_PRIVS: Final = 38
_READ_SIZE: Final = 1 << 20
# Where pidfds are missing (not Linux >= 5.3): how often to look for a new parent.
_PARENT_POLL_SECONDS: Final = 0.5

_SOURCE_BYTES: Final = 0
_SOURCE_PATH: Final = 1

# A tiny command touching every part of the sandbox: stdin, an input file, stdout,
# the shadowed clock and random functions.
_WARM_UP_WAT: Final = r"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "warm")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 4) (i32.const 0)
      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    (drop (call $random (i32.const 192) (i32.const 16)))
    (drop (call $clock (i32.const 0) (i64.const 0) (i32.const 24)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


# --- wire format (shared with the pool) ------------------------------------------------


def _encode_source(source: InputSource) -> list[object]:
    if isinstance(source, Path):
        return [_SOURCE_PATH, os.fsdecode(source)]
    return [_SOURCE_BYTES, bytes(source)]


def _decode_source(value: object) -> InputSource:
    kind, data = expect_list(value, what="source", length=2, max_len=2)
    if kind == _SOURCE_PATH:
        return Path(expect_str(data, what="source path"))
    return expect_bytes(data, what="source bytes", max_len=MAX_REQUEST)


def encode_request(job: SandboxJob) -> bytes:
    return pack(
        {
            "t": "job",
            "module": job.module,
            "seed": job.seed,
            "limits": [
                job.limits.fuel,
                job.limits.memory,
                job.limits.wall_seconds,
                job.limits.max_output,
            ],
            "args": list(job.args),
            "stdin": _encode_source(job.stdin),
            "inputs": [[path, _encode_source(source)] for path, source in job.inputs.items()],
        }
    )


def decode_request(payload: bytes) -> SandboxJob:
    value = unpack(
        payload,
        what="job request",
        max_size=MAX_REQUEST,
        max_str_len=64 * 1024,
        max_bin_len=MAX_REQUEST,
        max_array_len=64 * 1024,
        max_map_len=16,
    )
    if not isinstance(value, dict) or value.get("t") != "job":
        raise RemoteProtocolError("expected a job request")
    try:
        return _parse_request(value)
    except (KeyError, TypeError, LocalProtocolError) as exc:
        raise RemoteProtocolError(f"malformed job request: {exc!r}") from exc


def _parse_request(value: dict[str, object]) -> SandboxJob:
    fuel, memory, wall, output = expect_list(value["limits"], what="limits", max_len=4, length=4)
    return SandboxJob(
        module=expect_bytes(value["module"], what="module", max_len=MAX_REQUEST),
        seed=expect_bytes(value["seed"], what="seed", max_len=64),
        limits=JobLimits(
            expect_int(fuel, what="fuel", low=1, high=2**63),
            expect_int(memory, what="memory", low=1, high=2**63),
            expect_int(wall, what="wall", low=1, high=2**63),
            expect_int(output, what="output", low=0, high=MAX_OUTPUT_BYTES),
        ),
        args=tuple(
            expect_str(arg, what="argument")
            for arg in expect_list(value["args"], what="args", max_len=64 * 1024)
        ),
        stdin=_decode_source(value["stdin"]),
        inputs={
            expect_str(path, what="input path"): _decode_source(source)
            for path, source in (
                expect_list(item, what="input", length=2, max_len=2)
                for item in expect_list(value["inputs"], what="inputs", max_len=64 * 1024)
            )
        },
    )


def encode_result(result: SandboxResult) -> bytes:
    return pack(
        {
            "t": "result",
            "status": result.status.value,
            "exit": result.exit_code,
            "fuel": result.fuel_used,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "detail": result.detail,
            "elapsed": result.elapsed,
        }
    )


def max_reply_size(max_output: int) -> int:
    return max_output + MAX_STDERR + _REPLY_OVERHEAD


def decode_reply(payload: bytes, max_output: int) -> dict[str, object]:
    """A worker's message as a map with a string ``"t"``; SandboxError if malformed."""
    try:
        value = unpack(
            payload,
            what="worker message",
            max_size=max_reply_size(max_output),
            max_str_len=64 * 1024,
            max_bin_len=max(max_output, MAX_STDERR),
            max_array_len=16,
            max_map_len=16,
        )
    except RemoteProtocolError as exc:
        raise SandboxError(f"a worker sent a malformed message: {exc}") from exc
    if not isinstance(value, dict) or type(value.get("t")) is not str:
        raise SandboxError("a worker sent a message without a type")
    return value


def result_from_reply(reply: dict[str, object], max_output: int) -> SandboxResult:
    try:
        elapsed = reply["elapsed"]
        if type(elapsed) is not float:
            raise RemoteProtocolError("elapsed must be a float")
        return SandboxResult(
            status=JobStatus(expect_str(reply["status"], what="status")),
            exit_code=expect_int(reply["exit"], what="exit code", low=0, high=255),
            fuel_used=expect_int(reply["fuel"], what="fuel", low=0, high=2**64),
            stdout=expect_bytes(reply["stdout"], what="stdout", max_len=max_output),
            stderr=expect_bytes(reply["stderr"], what="stderr", max_len=MAX_STDERR),
            detail=expect_str(reply["detail"], what="detail"),
            elapsed=elapsed,
        )
    except (KeyError, ValueError, RemoteProtocolError) as exc:
        raise SandboxError(f"a worker sent a malformed result: {exc}") from exc


# --- the process ----------------------------------------------------------------------


def _write_frame(fd: int, payload: bytes) -> None:
    # Header and payload separately: joining them would copy a 64 MiB stdout again.
    for data in (len(payload).to_bytes(HEADER_SIZE, "big"), payload):
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _send(fd: int, message: dict[str, object]) -> None:
    _write_frame(fd, pack(message))


class _FrameReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._decoder = FrameDecoder(MAX_REQUEST)

    def next(self) -> bytes | None:
        """The next frame, or None when the parent closed the pipe."""
        while (frame := self._decoder.next_frame()) is None:
            data = os.read(self._fd, _READ_SIZE)
            if not data:
                return None
            self._decoder.feed(data)
        return frame


def _harden_process() -> None:
    """Die with the daemon, and never gain privileges (Linux; elsewhere a no-op).

    NO_NEW_PRIVS: even a sandbox escape cannot gain rights through a setuid program.
    """
    _watch_parent(os.getppid())
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _watch_parent(parent: int) -> None:
    """End this worker the moment the daemon that started it is gone, busy or not.

    Not PR_SET_PDEATHSIG: it fires when the *thread* that forked us exits, and trio
    spawns processes from its thread cache, whose threads end after 10 idle seconds --
    that killed every worker 10 s after it started.  A pidfd becomes readable when the
    process itself exits, whichever of its threads started us.
    """
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pidfd = -1
    if os.getppid() != parent:  # the parent died before we could watch it
        os._exit(1)

    def watch() -> None:
        if pidfd >= 0:
            select.select([pidfd], [], [])
        else:
            while os.getppid() == parent:
                time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in bytes (VmData, VmSize); 0 where unavailable."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _set_limit(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def confine(max_memory: int, max_output: int) -> None:
    """Apply the worker's resource limits; call after warming up (baseline measured)."""
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
    baseline = _status_kib("VmData")
    if not baseline:
        # Not Linux: RLIMIT_DATA may not count mmap'ed memory, and without /proc there
        # is no baseline to size it from.  Fuel, the store limit and the kill remain.
        return
    data = baseline + max_memory + 3 * max_output + DATA_HEADROOM
    _set_limit(resource.RLIMIT_DATA, data)
    _set_limit(resource.RLIMIT_AS, _status_kib("VmSize") + ADDRESS_HEADROOM + data)


def _limit_cpu(wall_seconds: int) -> None:
    """Let this job use at most its wall-clock limit (plus preparing) of CPU time.

    A worker serves many jobs, so the limit is the time used so far plus the job's
    share.  Past it the kernel sends SIGXCPU, which ends the worker; the pool reports
    the job as timed out and starts another worker.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = math.ceil(used + wall_seconds + CPU_ALLOWANCE_SECONDS)
    _old_soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _warm_up(sandbox: Sandbox) -> None:
    import wasmtime  # noqa: PLC0415 -- the worker is where wasmtime is imported

    result = sandbox.run(
        SandboxJob(
            module=bytes(wasmtime.wat2wasm(_WARM_UP_WAT)),
            seed=bytes(32),
            limits=JobLimits(fuel=10**6, memory=1 << 20, wall_seconds=5, max_output=1024),
            stdin=b"warm-up stdin",
            inputs={"warm": b"warm-up input"},
        )
    )
    if result.status is not JobStatus.OK:
        raise SandboxError(f"the warm-up job failed: {result.status}: {result.detail}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m p2pshare.compute.worker")
    parser.add_argument("--max-memory", type=int, required=True)
    parser.add_argument("--max-output", type=int, required=True)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # The protocol owns the original stdout; anything printed by accident (a
    # library's warning) goes to stderr instead of corrupting a frame.
    out = os.dup(1)
    os.dup2(2, 1)
    _harden_process()
    if args.nice:
        os.nice(args.nice)
    from p2pshare.compute.sandbox import Sandbox  # noqa: PLC0415 -- after the fd set-up

    sandbox = Sandbox(args.work_dir)
    _warm_up(sandbox)
    confine(args.max_memory, args.max_output)
    _send(out, {"t": "ready", "pid": os.getpid()})
    reader = _FrameReader(0)
    while (payload := reader.next()) is not None:
        _send(out, {"t": "state", "state": JobState.COMPILING.value})
        try:
            job = decode_request(payload)
            _limit_cpu(job.limits.wall_seconds)
            result = sandbox.run(job, on_state=lambda state: _on_state(out, state))
        except (SandboxError, RemoteProtocolError) as exc:
            _send(out, {"t": "error", "message": str(exc)})
            continue
        _write_frame(out, encode_result(result))
    # Skip interpreter teardown: wasmtime's runtime threads may still be winding down,
    # and there is nothing left to flush.
    os._exit(0)


def _on_state(out: int, state: JobState) -> None:
    if state is not JobState.COMPILING:  # already sent as the acknowledgement
        _send(out, {"t": "state", "state": state.value})


if __name__ == "__main__":
    sys.exit(main())
