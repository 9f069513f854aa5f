"""The sandbox in-process: example programs, every limit, the WASI profile, determinism."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import wasmtime

from p2pshare.compute.jobs import MAX_STDERR, SandboxJob, SandboxResult
from p2pshare.compute.sandbox import Sandbox
from p2pshare.compute.wasi import FIXED_REALTIME_NS, HostIO
from p2pshare.proto.errors import UnsafePathError
from p2pshare.proto.job import JobState
from p2pshare.proto.jobspec import JobLimits
from p2pshare.proto.receipt import JobStatus, output_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    Build = Callable[[str], bytes]

SMALL = JobLimits(fuel=10**8, memory=16 * 1024**2, wall_seconds=2, max_output=1024**2)
SEED = bytes(range(32))


def _run(
    sandbox: Sandbox, module: bytes, *, seed: bytes = SEED, limits: JobLimits = SMALL, **fields: Any
) -> SandboxResult:
    return sandbox.run(SandboxJob(module=module, seed=seed, limits=limits, **fields))


def _wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def _fnv1a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


# --- the example programs ----------------------------------------------------------------


def test_wordcount(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("wordcount"), stdin=b"one two\n  three\tfour\nfive")
    assert (result.status, result.exit_code, result.stdout) == (JobStatus.OK, 0, b"2 5 25\n")
    assert result.digest == output_digest(b"2 5 25\n")
    assert result.fuel_used > 0


def test_fnv1a_matches_a_reference(sandbox: Sandbox, wasm: Build) -> None:
    data = os.urandom(100_000)
    result = _run(sandbox, wasm("fnv1a"), stdin=data)
    assert result.stdout == f"{_fnv1a(data):016x}\n".encode()


def test_rot13_twice_is_the_identity(sandbox: Sandbox, wasm: Build) -> None:
    text = b"Hello, World! " * 10_000
    once = _run(sandbox, wasm("rot13"), stdin=text)
    assert once.stdout.startswith(b"Uryyb, Jbeyq! ")
    assert _run(sandbox, wasm("rot13"), stdin=once.stdout).stdout == text


def test_input_files_are_readable_at_their_guest_paths(
    sandbox: Sandbox, wasm: Build, tmp_path: Path
) -> None:
    host_file = tmp_path / "host.txt"
    host_file.write_bytes(b"from a host file\n")
    inputs = {"data/in.txt": b"from bytes\n", "other": host_file}
    for path, expected in (("data/in.txt", b"from bytes\n"), ("other", b"from a host file\n")):
        result = _run(sandbox, wasm("catfile"), args=(path,), inputs=inputs)
        assert (result.status, result.stdout) == (JobStatus.OK, expected)
    missing = _run(sandbox, wasm("catfile"), args=("nothing",), inputs=inputs)
    assert (missing.status, missing.exit_code) == (JobStatus.EXIT, 1)
    assert missing.stderr == b"catfile: cannot open or read the input\n"


def test_stdin_from_a_host_file(sandbox: Sandbox, wasm: Build, tmp_path: Path) -> None:
    stdin = tmp_path / "stdin"
    stdin.write_bytes(b"a b c\n")
    assert _run(sandbox, wasm("wordcount"), stdin=stdin).stdout == b"1 3 6\n"


def test_stdin_bytes_are_no_file_the_worker_could_hold_after_answering(
    wasm: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wasmtime reads a stdin *file* in a task of its own runtime, which closes it a
    # moment after the job: a worker could answer while still holding it.  Seen from
    # inside the job (our fd_write), a stdin given as bytes must be no open file.
    files_open: list[str] = []
    fd_write = HostIO.fd_write

    def spying_fd_write(self: HostIO, *args: Any) -> int:
        for fd in Path("/proc/self/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # iterdir's own descriptor
                target = fd.readlink()
                if target.is_relative_to(tmp_path) and not target.is_dir():
                    files_open.append(str(target))
        return fd_write(self, *args)

    monkeypatch.setattr(HostIO, "fd_write", spying_fd_write)
    with Sandbox(tmp_path) as box:
        # flood writes without ever reading its stdin.
        result = _run(box, wasm("flood"), stdin=b"never read")
    assert result.status is JobStatus.OUTPUT_LIMIT
    assert files_open == []


def test_states_are_reported(sandbox: Sandbox, wasm: Build) -> None:
    states: list[JobState] = []
    sandbox.run(SandboxJob(wasm("wordcount"), SEED, SMALL), on_state=states.append)
    assert states == [JobState.COMPILING, JobState.RUNNING]


# --- every limit -------------------------------------------------------------------------


def test_infinite_loop_runs_out_of_fuel(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("spin"))
    assert result.status is JobStatus.OUT_OF_FUEL
    assert result.fuel_used == SMALL.fuel


def test_infinite_loop_with_fuel_to_spare_times_out(sandbox: Sandbox, wasm: Build) -> None:
    limits = JobLimits(fuel=10**15, memory=1 << 20, wall_seconds=1)
    result = _run(sandbox, wasm("spin"), limits=limits)
    assert result.status is JobStatus.TIMEOUT
    assert 0.95 < result.elapsed < 1.5


def test_memory_bomb_hits_the_memory_limit(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("membomb"))
    assert result.status is JobStatus.MEMORY_LIMIT
    assert "16777216" in result.detail


def test_initial_memory_above_the_limit(sandbox: Sandbox) -> None:
    module = _wat('(module (memory (export "memory") 1024) (func (export "_start")))')
    assert _run(sandbox, module).status is JobStatus.MEMORY_LIMIT


def test_output_flood_keeps_exactly_the_limit(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("flood"))
    assert result.status is JobStatus.OUTPUT_LIMIT
    assert result.stdout == b"y\n" * (SMALL.max_output // 2)


def test_output_of_exactly_the_limit_is_fine(sandbox: Sandbox, wasm: Build) -> None:
    data = b"x" * SMALL.max_output
    assert _run(sandbox, wasm("rot13"), stdin=data).status is JobStatus.OK
    over = _run(sandbox, wasm("rot13"), stdin=data + b"x")
    assert over.status is JobStatus.OUTPUT_LIMIT
    assert over.stdout == b"k" * SMALL.max_output


def test_stderr_is_truncated_not_fatal(sandbox: Sandbox) -> None:
    module = _wat(
        """(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 2)
          (func (export "_start") (local $i i32)
            (i32.store (i32.const 0) (i32.const 0))
            (i32.store (i32.const 4) (i32.const 65536))
            (loop $l
              (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))))"""
    )
    result = _run(sandbox, module)
    assert result.status is JobStatus.OK
    assert len(result.stderr) == MAX_STDERR


def test_deep_recursion_overflows_the_stack(sandbox: Sandbox, wasm: Build) -> None:
    assert _run(sandbox, wasm("recurse")).status is JobStatus.STACK_OVERFLOW


def test_limits_apply_to_a_start_function(sandbox: Sandbox) -> None:
    module = _wat(
        '(module (memory (export "memory") 1) (func $s (loop br 0)) (start $s)'
        ' (func (export "_start")))'
    )
    assert _run(sandbox, module).status is JobStatus.OUT_OF_FUEL


# --- refusals ------------------------------------------------------------------------------


def test_forbidden_import_is_named_and_never_run(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("socket"))
    assert result.status is JobStatus.FORBIDDEN_IMPORT
    assert "wasi_snapshot_preview1.sock_open" in result.detail
    assert (result.fuel_used, result.stdout) == (0, b"")
    env = _run(sandbox, _wat('(module (import "env" "socket" (func)) (func (export "_start")))'))
    assert env.status is JobStatus.FORBIDDEN_IMPORT
    assert "env.socket" in env.detail


@pytest.mark.parametrize(
    "module",
    [
        b"not WebAssembly at all",
        # WAT text: wasmtime.Module would compile it; a job module must be binary.
        b'(module (func (export "_start")))',
        b"\0asm\x01\0\0\0\x01\x04garbage",
        bytes(wasmtime.wat2wasm('(module (func (export "main")))')),
        bytes(wasmtime.wat2wasm('(module (func (export "_start") (param i32)))')),
    ],
    ids=["text", "wat", "garbage", "no _start", "_start with a parameter"],
)
def test_not_a_runnable_module_is_invalid(sandbox: Sandbox, module: bytes) -> None:
    assert _run(sandbox, module).status is JobStatus.INVALID_MODULE


def test_wrongly_typed_wasi_import_is_invalid(sandbox: Sandbox) -> None:
    module = _wat(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))'
        ' (func (export "_start")))'
    )
    assert _run(sandbox, module).status is JobStatus.INVALID_MODULE


def test_unsafe_input_path_is_a_caller_error(sandbox: Sandbox, wasm: Build) -> None:
    with pytest.raises(UnsafePathError):
        _run(sandbox, wasm("wordcount"), inputs={"../x": b""})


# --- the WASI profile ------------------------------------------------------------------


def test_path_escapes_and_writes_fail(sandbox: Sandbox, wasm: Build, tmp_path: Path) -> None:
    result = _run(sandbox, wasm("escape"), inputs={"sub/file": b"inside"})
    assert result.status is JobStatus.OK
    lines = result.stdout.decode().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../../etc/passwd",
        "..",
        "pwned.txt",
    ]
    assert all(line.rsplit(" ", 1)[1] != "000" for line in lines)
    assert b"root:" not in result.stdout


def test_blocking_poll_oneoff_fails_at_once(sandbox: Sandbox, wasm: Build) -> None:
    result = _run(sandbox, wasm("sleep"))
    assert (result.status, result.stdout) == (JobStatus.OK, b"poll_oneoff 052\n")
    assert result.elapsed < 0.5


def test_exit_codes(sandbox: Sandbox) -> None:
    def exiting(code: int) -> bytes:
        return _wat(
            '(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32)))'
            f' (memory (export "memory") 1) (func (export "_start") (call $e (i32.const {code}))))'
        )

    assert _run(sandbox, exiting(0)).status is JobStatus.OK
    assert (_run(sandbox, exiting(7)).status, _run(sandbox, exiting(7)).exit_code) == (
        JobStatus.EXIT,
        7,
    )
    # WASI allows 0..125; anything else ends the run as a trap.
    assert _run(sandbox, exiting(300)).status is JobStatus.TRAP


@pytest.mark.parametrize(
    "call",
    [
        "(call $fd_write (i32.const 1) (i32.const -16) (i32.const 1) (i32.const 8))",
        "(call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 65534))",
        "(call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8))",
        "(call $random_get (i32.const 65000) (i32.const 1000))",
        "(call $random_get (i32.const -1) (i32.const 2))",
        "(call $clock_time_get (i32.const 0) (i64.const 0) (i32.const 65530))",
    ],
    ids=["iovecs outside", "count outside", "data outside", "random", "random wraps", "clock"],
)
def test_host_functions_refuse_pointers_outside_memory(sandbox: Sandbox, call: str) -> None:
    # The iovec at 16 points at 65000 for 1000 bytes: past the single page.
    module = _wat(
        f"""(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "random_get"
            (func $random_get (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "clock_time_get"
            (func $clock_time_get (param i32 i64 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (i32.store (i32.const 16) (i32.const 65000))
            (i32.store (i32.const 20) (i32.const 1000))
            (call $exit {call})))"""
    )
    result = _run(sandbox, module)
    assert (result.status, result.exit_code, result.stdout) == (JobStatus.EXIT, 21, b"")


def test_other_descriptors_cannot_be_written(sandbox: Sandbox) -> None:
    module = _wat(
        """(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (call $exit
              (call $fd_write (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 8)))))"""
    )
    assert _run(sandbox, module).exit_code == 8  # EBADF


def test_environment_is_empty_and_arguments_are_passed(sandbox: Sandbox) -> None:
    module = _wat(
        """(module
          (import "wasi_snapshot_preview1" "environ_sizes_get"
            (func $env (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "args_sizes_get"
            (func $args (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (drop (call $env (i32.const 0) (i32.const 4)))
            (drop (call $args (i32.const 8) (i32.const 12)))
            ;; exit with 10 * environment count + argument count
            (call $exit (i32.add (i32.mul (i32.load (i32.const 0)) (i32.const 10))
                                 (i32.load (i32.const 8))))))"""
    )
    result = _run(sandbox, module, args=("a", "b"))
    assert (result.status, result.exit_code) == (JobStatus.EXIT, 3)  # job.wasm a b, no env


# --- determinism ---------------------------------------------------------------------------


def test_clock_and_random_are_deterministic(sandbox: Sandbox, wasm: Build) -> None:
    first = _run(sandbox, wasm("entropy"))
    second = _run(sandbox, wasm("entropy"))
    assert first.status is JobStatus.OK
    assert (first.stdout, first.fuel_used) == (second.stdout, second.fuel_used)
    line = bytes.fromhex(first.stdout.decode().strip())
    assert int.from_bytes(line[:8], "little") == FIXED_REALTIME_NS
    assert int.from_bytes(line[8:16], "little") == 0
    # Another job ID gives other random bytes, and the same clock.
    other = bytes.fromhex(_run(sandbox, wasm("entropy"), seed=bytes(32)).stdout.decode().strip())
    assert other[:16] == line[:16]
    assert other[16:] != line[16:]


def test_a_fresh_sandbox_gives_the_same_digest_and_fuel(sandbox: Sandbox, wasm: Build) -> None:
    data = os.urandom(50_000)
    first = _run(sandbox, wasm("fnv1a"), stdin=data)
    with Sandbox() as fresh:
        second = _run(fresh, wasm("fnv1a"), stdin=data)
    assert (first.digest, first.fuel_used) == (second.digest, second.fuel_used)


def test_input_files_have_fixed_times(sandbox: Sandbox, tmp_path: Path) -> None:
    host_file = tmp_path / "f"
    host_file.write_bytes(b"x")
    # path_filestat_get("f") into 64 bytes at 64; exit with the low byte of mtime != 0.
    module = _wat(
        """(module
          (import "wasi_snapshot_preview1" "path_filestat_get"
            (func $stat (param i32 i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "f")
          (func (export "_start")
            (drop (call $stat
              (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 64)))
            (i32.store (i32.const 8) (i32.const 104))
            (i32.store (i32.const 12) (i32.const 16))
            (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))))"""
    )
    result = _run(sandbox, module, inputs={"f": host_file})
    # filestat bytes 40..56: atime and mtime, in nanoseconds.
    atime = int.from_bytes(result.stdout[:8], "little")
    mtime = int.from_bytes(result.stdout[8:], "little")
    assert atime == mtime == 1_577_836_800 * 10**9
