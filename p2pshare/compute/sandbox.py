"""Run one job's WebAssembly under wasmtime, inside limits, with a deterministic WASI.

The sandbox layers, from the module inwards (docs/compute.md, "Security boundary"):

1. **Imports.**  :func:`p2pshare.compute.imports.check_module` reads the import
   section before anything is compiled; the compiled module's import list is
   checked again.  Anything outside the allow-list ends the job as
   ``forbidden_import``, bytes that are not a core module as ``invalid_module``.
2. **wasmtime limits.**  Fuel (``out_of_fuel``), a store memory limit
   (``memory_limit``), a fixed maximum wasm stack (``stack_overflow``), an epoch
   deadline driven by a ticker thread (``timeout``).
3. **WASI profile.**  stdin from memory or a file, input files in a read-only preopened
   directory, no environment, no sockets.  stdout and stderr are written by our
   own ``fd_write`` (p2pshare.compute.wasi) so the stdout cap traps the guest at the exact byte
   (``output_limit``); the clock stands still, ``random_get`` is a BLAKE3 stream
   keyed by the job ID, ``poll_oneoff`` fails with ENOSYS at once (a blocking
   poll is not interruptible by the epoch), ``sched_yield`` does nothing.
   WebAssembly threads are off and NaNs are canonicalised, so a job's outputs,
   exit status and fuel are the same on every worker (same wasmtime version).

The worker process around the sandbox (p2pshare.compute.worker) adds the
operating-system layer: rlimits, niceness and the parent's hard kill.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import blake3
import wasmtime
from wasmtime import _bindings as wasmtime_c

from p2pshare.compute.errors import ForbiddenImportError, InvalidModuleError, SandboxError
from p2pshare.compute.imports import (
    check_module,
    forbidden_error,
    is_allowed,
)
from p2pshare.compute.jobs import (
    InputSource,
    SandboxJob,
    SandboxResult,
    refused,
)
from p2pshare.compute.wasi import HostIO, OutputLimitError, define_host_functions
from p2pshare.errors import LocalProtocolError
from p2pshare.proto.job import JobState
from p2pshare.proto.jobspec import WASM_PAGE_SIZE, JobLimits
from p2pshare.proto.paths import check_tree
from p2pshare.proto.receipt import JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# The epoch ticks every 10 ms: the wall-clock limit holds to about that, and an idle
# worker does not tick at all (see _Ticker).
TICK_SECONDS: Final = 0.01
# The guest's own stack; deep recursion traps as stack_overflow well before the
# worker's 8 MiB native stack is at risk.
MAX_WASM_STACK: Final = 1024 * 1024
# Tables hold 8 bytes per element; a million is more than any real program needs.
MAX_TABLE_ELEMENTS: Final = 1 << 20
MAX_TABLES: Final = 8
# Input files and the directories that hold them all carry this mtime and atime.
FIXED_FILE_TIME: Final = 1_577_836_800
PROGRAM_NAME: Final = "job.wasm"
GUEST_ROOT: Final = "/"
# Compiled modules kept for the next job with the same module: by count and by the
# size of their wasm, which bounds the (larger) machine code they hold.
MODULE_CACHE_ENTRIES: Final = 16
MODULE_CACHE_BYTES: Final = 16 * 1024 * 1024
# A failure with the linear memory within this fraction of its limit is reported as
# memory_limit (see Sandbox._failed).
MEMORY_SLACK_FRACTION: Final = 16
_DETAIL_CHARS: Final = 300


def make_engine_config() -> wasmtime.Config:
    """The one wasmtime configuration jobs run under (see the module docstring)."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.max_wasm_stack = MAX_WASM_STACK
    config.cranelift_nan_canonicalization = True
    # One job gets one core: the pool runs one worker per slot.
    config.parallel_compilation = False
    # Threads and shared memory would break determinism and the one-thread model;
    # relaxed SIMD differs between CPUs; memory64 and multiple memories would escape
    # the memory accounting; GC, exceptions, stack switching and components are not
    # part of the job profile and only add attack surface.
    config.wasm_threads = False
    config.shared_memory = False
    config.wasm_relaxed_simd = False
    config.wasm_memory64 = False
    config.wasm_multi_memory = False
    config.wasm_gc = False
    config.wasm_function_references = False
    config.wasm_exceptions = False
    config.wasm_stack_switching = False
    config.wasm_component_model = False
    config.wasm_custom_page_sizes = False
    config.wasm_wide_arithmetic = False
    return config


class _Ticker:
    """Advances the engine's epoch every TICK_SECONDS while at least one job runs.

    A thread, not SIGALRM (wasmtime-py#126: the signal handler never runs while
    wasm holds the main thread).  It catches up after oversleeping, so the
    deadline follows the wall clock rather than the number of wake-ups.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._condition = threading.Condition()
        self._active = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        with self._condition:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="p2pshare-epoch", daemon=True
                )
                self._thread.start()
            self._condition.notify_all()

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._active -= 1

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        start, done = time.monotonic(), 0
        while True:
            with self._condition:
                if self._active == 0 and not self._closed:
                    while self._active == 0 and not self._closed:
                        self._condition.wait()
                    start, done = time.monotonic(), 0
                if self._closed:
                    return
            time.sleep(TICK_SECONDS)
            due = int((time.monotonic() - start) / TICK_SECONDS)
            while done < due:
                self._engine.increment_epoch()
                done += 1


def _first_line(text: str) -> str:
    """The most telling line of a wasmtime error: its root cause, shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "unknown error"
    line = line.removeprefix("wasm trap: ")
    return line if len(line) <= _DETAIL_CHARS else line[:_DETAIL_CHARS] + "..."


_TRAP_STATUS: Final = {
    wasmtime.TrapCode.OUT_OF_FUEL: JobStatus.OUT_OF_FUEL,
    wasmtime.TrapCode.STACK_OVERFLOW: JobStatus.STACK_OVERFLOW,
    wasmtime.TrapCode.INTERRUPT: JobStatus.TIMEOUT,
}
# Instantiation errors that mean "the module asks for more than its limits allow".
_LIMIT_MESSAGES: Final = ("exceeds memory limits", "exceeds table limits", "resource limit")


@dataclass
class _Outcome:
    status: JobStatus
    exit_code: int
    detail: str


class Sandbox:
    """A wasmtime engine set up for jobs, with its epoch ticker and module cache.

    Thread-safe: each :meth:`run` has its own store.  Use as a context manager, or
    call :meth:`close`, to stop the ticker thread.
    """

    def __init__(self, work_dir: Path | None = None) -> None:
        self.engine = wasmtime.Engine(make_engine_config())
        self._work_dir = work_dir
        self._ticker = _Ticker(self.engine)
        self._cache: OrderedDict[bytes, tuple[wasmtime.Module, int]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._ticker.close()

    def compile(self, wasm: bytes) -> wasmtime.Module:
        """Check imports, compile (or reuse a compiled copy) and check them again.

        Raises InvalidModuleError or ForbiddenImportError.
        """
        check_module(wasm)
        key = blake3.blake3(wasm).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached[0]
        try:
            # bytes, never str: wasmtime.Module would compile a str as WAT text.
            module = wasmtime.Module(self.engine, bytes(wasm))
        except wasmtime.WasmtimeError as exc:
            raise InvalidModuleError(
                f"the module is not valid WebAssembly: {_first_line(str(exc))}"
            ) from None
        forbidden = [
            f"{item.module}.{item.name}"
            for item in module.imports
            if not (
                isinstance(item.type, wasmtime.FuncType)
                and item.name is not None
                and is_allowed(item.module, item.name)
            )
        ]
        if forbidden:
            raise forbidden_error(forbidden)
        start = next((item for item in module.exports if item.name == "_start"), None)
        if (
            start is None
            or not isinstance(start.type, wasmtime.FuncType)
            or start.type.params
            or start.type.results
        ):
            raise InvalidModuleError(
                "the module has no _start function; jobs are WASI commands (wasm32-wasip1)"
            )
        with self._cache_lock:
            self._cache[key] = (module, len(wasm))
            while len(self._cache) > MODULE_CACHE_ENTRIES or (
                len(self._cache) > 1
                and sum(size for _module, size in self._cache.values()) > MODULE_CACHE_BYTES
            ):
                self._cache.popitem(last=False)
        return module

    def run(
        self, job: SandboxJob, on_state: Callable[[JobState], None] | None = None
    ) -> SandboxResult:
        """Run ``job`` to its end; every way a job can end is a status, not an exception.

        Raises SandboxError only when the host fails (an input file cannot be read,
        no memory for the store), UnsafePathError for an input path the protocol
        forbids (a caller's bug: specs are checked on decoding).
        """
        check_tree(job.inputs)
        if on_state is not None:
            on_state(JobState.COMPILING)
        try:
            module = self.compile(job.module)
        except InvalidModuleError as exc:
            return refused(JobStatus.INVALID_MODULE, str(exc))
        except ForbiddenImportError as exc:
            return refused(JobStatus.FORBIDDEN_IMPORT, str(exc))
        with tempfile.TemporaryDirectory(prefix="p2pshare-job-", dir=self._work_dir) as tmp:
            root = _materialise(job, Path(tmp))
            if on_state is not None:
                on_state(JobState.RUNNING)
            return self._execute(job, module, root)

    def _execute(self, job: SandboxJob, module: wasmtime.Module, root: Path) -> SandboxResult:
        limits = job.limits
        host = HostIO(limits.max_output, job.seed)
        try:
            store = wasmtime.Store(self.engine)
            store.set_limits(
                memory_size=limits.memory,
                table_elements=MAX_TABLE_ELEMENTS,
                instances=1,
                tables=MAX_TABLES,
                memories=1,
            )
            store.set_fuel(limits.fuel)
            wasi = wasmtime.WasiConfig()
            wasi.argv = [PROGRAM_NAME, *job.args]
            _set_stdin(wasi, job.stdin)
            wasi.preopen_dir(str(root), GUEST_ROOT, fs_mutable=False)
            store.set_wasi(wasi)
            linker = wasmtime.Linker(self.engine)
            linker.define_wasi()
            linker.allow_shadowing = True
            define_host_functions(linker, host)
        except wasmtime.WasmtimeError as exc:
            raise SandboxError(f"cannot set up the job's store: {exc}") from exc
        store.set_epoch_deadline(max(1, math.ceil(limits.wall_seconds / TICK_SECONDS)))
        started = time.monotonic()
        with self._ticker:
            outcome = self._call(store, linker, module, host, limits)
        elapsed = time.monotonic() - started
        fuel_used = limits.fuel - store.get_fuel()
        return SandboxResult(
            outcome.status,
            outcome.exit_code,
            fuel_used,
            bytes(host.stdout),
            bytes(host.stderr),
            outcome.detail,
            elapsed,
        )

    def _call(
        self,
        store: wasmtime.Store,
        linker: wasmtime.Linker,
        module: wasmtime.Module,
        host: HostIO,
        limits: JobLimits,
    ) -> _Outcome:
        instantiated = False
        try:
            instance = linker.instantiate(store, module)
            instantiated = True
            exports = instance.exports(store)
            memory = exports.get("memory")
            host.memory = memory if isinstance(memory, wasmtime.Memory) else None
            start = exports["_start"]
            if not isinstance(start, wasmtime.Func):
                return _Outcome(JobStatus.INVALID_MODULE, 0, "_start is not a function")
            start(store)
        except Exception as exc:  # noqa: BLE001 -- _ended re-raises what is not the job's
            # wasmtime-py keeps the exception in a local of a frame of its traceback:
            # a cycle that would hold this store (gigabytes of address space, the
            # job's files) until the garbage collector runs.
            _forget_traceback(exc)
            return self._ended(store, host, limits, exc, instantiated=instantiated)
        return _Outcome(JobStatus.OK, 0, "the job finished")

    def _ended(  # noqa: PLR0911 -- one return per way a run can end
        self,
        store: wasmtime.Store,
        host: HostIO,
        limits: JobLimits,
        exc: Exception,
        *,
        instantiated: bool,
    ) -> _Outcome:
        """The outcome of a run that ended with ``exc``; re-raise what is not the job's."""
        if isinstance(exc, OutputLimitError):
            return _Outcome(
                JobStatus.OUTPUT_LIMIT, 0, f"the job wrote more than {limits.max_output} bytes"
            )
        if isinstance(exc, wasmtime.ExitTrap):
            if exc.code == 0:
                return _Outcome(JobStatus.OK, 0, "the job exited with status 0")
            return self._failed(
                store, host, limits, _Outcome(JobStatus.EXIT, exc.code, f"exit status {exc.code}")
            )
        if isinstance(exc, wasmtime.Trap):
            return self._failed(store, host, limits, _classify_trap(exc, limits))
        if isinstance(exc, wasmtime.WasmtimeError):
            detail = _first_line(str(exc))
            if not instantiated:
                if any(text in detail for text in _LIMIT_MESSAGES):
                    return _Outcome(JobStatus.MEMORY_LIMIT, 0, detail)
                # Imports of the wrong type, for instance.
                return _Outcome(JobStatus.INVALID_MODULE, 0, detail)
            # A WASI function refusing the guest's arguments (a misaligned pointer, a
            # memory export missing, an exit status above 125) ends the run.
            return self._failed(store, host, limits, _Outcome(JobStatus.TRAP, 0, detail))
        if isinstance(exc, (SandboxError, LocalProtocolError)):
            raise exc
        # One of our own host functions failed: the host's fault, not the job's.
        raise SandboxError(f"a host function failed: {exc!r}") from None

    @staticmethod
    def _failed(
        store: wasmtime.Store, host: HostIO, limits: JobLimits, outcome: _Outcome
    ) -> _Outcome:
        """Relabel a failure as memory_limit when the memory was (nearly) full by then.

        wasmtime's C API cannot trap on a refused memory.grow; the guest sees -1 and
        typically aborts (a trap) or exits non-zero.  Memory within a sixteenth of the
        limit (one page at least) says why.  A grow refused far below the limit (one
        huge request) keeps the program's own status: the limit held either way.
        """
        memory = host.memory
        slack = max(WASM_PAGE_SIZE, limits.memory // MEMORY_SLACK_FRACTION)
        if memory is not None and memory.data_len(store) + slack > limits.memory:
            return _Outcome(
                JobStatus.MEMORY_LIMIT,
                0,
                f"the job's memory reached its limit of {limits.memory} bytes ({outcome.detail})",
            )
        return outcome


def _forget_traceback(exc: BaseException | None) -> None:
    """Drop the tracebacks of ``exc`` and of the exceptions chained to it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _classify_trap(exc: wasmtime.Trap, limits: JobLimits) -> _Outcome:
    status = _TRAP_STATUS.get(exc.trap_code, JobStatus.TRAP) if exc.trap_code else JobStatus.TRAP
    if status is JobStatus.OUT_OF_FUEL:
        return _Outcome(status, 0, f"the job used all of its {limits.fuel} fuel")
    if status is JobStatus.TIMEOUT:
        return _Outcome(
            status, 0, f"the job ran longer than its wall-clock limit of {limits.wall_seconds} s"
        )
    if status is JobStatus.STACK_OVERFLOW:
        return _Outcome(status, 0, "the job overflowed its stack (too deep a recursion)")
    return _Outcome(status, 0, _first_line(exc.message))


def _set_stdin(wasi: wasmtime.WasiConfig, stdin: InputSource) -> None:
    """The guest's stdin: bytes from memory, a host file through wasmtime's reader.

    wasmtime reads a stdin *file* in a task on its own runtime thread, and that task
    closes the file a moment after the store is gone, when the worker may already
    have answered.  Bytes (the empty stdin of a job without one, and any stdin the
    pool did not spill to a file) go in through ``wasi_config_set_stdin_bytes``
    instead: no file, no task, nothing left open once :meth:`Sandbox.run` returns.
    wasmtime-py 50 has no setter for it, so it is called as the C API it wraps.
    """
    if isinstance(stdin, Path):
        wasi.stdin_file = str(stdin)
        return
    data = bytes(stdin)
    vec = wasmtime_c.wasm_byte_vec_t()
    # wasm_byte_vec_new copies from the bytes object's own buffer.
    pointer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    wasmtime_c.wasm_byte_vec_new(ctypes.byref(vec), len(data), pointer)
    # Takes the vector's contents: nothing is left to free here.
    wasmtime_c.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


def _materialise(job: SandboxJob, tmp: Path) -> Path:
    """Lay out the inputs under ``tmp/root``; return that root.

    Files and directories get a fixed mtime and atime, so a program that looks at
    them sees the same on every worker.  Inputs are copied, never linked: the guest
    must not learn the host file's times, nor reach it if the copy were writable.
    """
    root = tmp / "root"
    root.mkdir(mode=0o700)
    try:
        for guest_path, source in job.inputs.items():
            target = root / guest_path
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _place(source, target)
            os.utime(target, (FIXED_FILE_TIME, FIXED_FILE_TIME))
        for directory, _dirs, _files in _walk_bottom_up(root):
            os.utime(directory, (FIXED_FILE_TIME, FIXED_FILE_TIME))
        if isinstance(job.stdin, Path):
            _check_regular(job.stdin)
    except OSError as exc:
        raise SandboxError(f"cannot prepare the job's files: {exc}") from exc
    return root


def _walk_bottom_up(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    return os.walk(root, topdown=False)


def _check_regular(path: Path) -> None:
    # A FIFO or a device as stdin would block or never end outside any limit.
    if not stat.S_ISREG(path.stat().st_mode):
        raise SandboxError(f"{path} is not a regular file")


def _place(source: InputSource, target: Path) -> None:
    if isinstance(source, Path):
        _check_regular(source)
        shutil.copyfile(source, target)
    else:
        target.write_bytes(source)
