"""The job's WASI functions that p2pshare writes itself, in place of wasmtime's.

Layer 3 of the sandbox (p2pshare.compute.sandbox describes all of them): stdout and
stderr through our own ``fd_write``, so the stdout cap traps the guest at the exact
byte; a clock that stands still; ``random_get`` as a BLAKE3 stream keyed by the job
ID; ``poll_oneoff`` refused at once; ``sched_yield`` doing nothing.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Final

import blake3
import wasmtime

from p2pshare.compute.imports import WASI_MODULE
from p2pshare.compute.jobs import MAX_STDERR

if TYPE_CHECKING:
    from collections.abc import Callable

# The deterministic clock: realtime is always 2020-01-01T00:00:00Z, the monotonic and
# CPU-time clocks always read zero.  A program measuring durations sees none pass.
FIXED_REALTIME_NS: Final = 1_577_836_800 * 10**9
CLOCK_RESOLUTION_NS: Final = 1000
RANDOM_DOMAIN: Final = b"p2pshare-random-v1\0"

# WASI errno values (wasi_snapshot_preview1).
_ESUCCESS: Final = 0
_EBADF: Final = 8
_EFAULT: Final = 21
_EINVAL: Final = 28
_ENOSYS: Final = 52
_IOV_MAX: Final = 1024
_CLOCK_REALTIME: Final = 0
_CLOCK_THREAD_CPUTIME: Final = 3
_IOVEC: Final = struct.Struct("<II")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_RANDOM_BLOCK: Final = 1024 * 1024


class OutputLimitError(Exception):
    """Raised by our fd_write to trap the guest at the stdout cap."""


class HostIO:
    """The per-job state behind the shadowed WASI functions."""

    def __init__(self, max_output: int, seed: bytes) -> None:
        self.max_output = max_output
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.memory: wasmtime.Memory | None = None
        self._random = blake3.blake3(RANDOM_DOMAIN + seed)
        self._random_offset = 0

    def _region(self, caller: wasmtime.Caller) -> tuple[int, int]:
        """The address and size of the guest's linear memory; (0, 0) if it has none."""
        memory = self.memory
        if memory is None:
            # During instantiation (a start function) the export is not cached yet.
            export = caller.get("memory")
            if not isinstance(export, wasmtime.Memory):
                return 0, 0
            memory = export
        size = memory.data_len(caller)
        if size == 0:
            return 0, 0
        return ctypes.addressof(memory.data_ptr(caller).contents), size

    # Each function below checks every guest pointer against the memory size before
    # touching it: a guest pointer is an offset the guest chose, and ctypes would
    # follow it anywhere in the worker's address space.  Guest i32s arrive signed.

    def fd_write(
        self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int
    ) -> int:
        if fd not in (1, 2):
            # Every other descriptor is stdin, a read-only file or a directory.
            return _EBADF
        base, size = self._region(caller)
        iovs, iovs_len, nwritten = iovs & 0xFFFFFFFF, iovs_len & 0xFFFFFFFF, nwritten & 0xFFFFFFFF
        if iovs_len > _IOV_MAX:
            return _EINVAL
        if iovs + 8 * iovs_len > size or nwritten + 4 > size:
            return _EFAULT
        table = ctypes.string_at(base + iovs, 8 * iovs_len) if iovs_len else b""
        pieces = [_IOVEC.unpack_from(table, 8 * index) for index in range(iovs_len)]
        if any(pointer + length > size for pointer, length in pieces):
            return _EFAULT
        total = sum(length for _pointer, length in pieces)
        if fd == 1:
            room = self.max_output - len(self.stdout)
            for pointer, length in pieces:
                # Keep the output up to the exact cap: what a replica keeps is the same.
                take = min(length, self.max_output - len(self.stdout))
                if take > 0:
                    self.stdout += ctypes.string_at(base + pointer, take)
            if total > room:
                # Trap rather than return an error: a guest that ignores write errors
                # would otherwise spin until fuel or time runs out.
                raise OutputLimitError
        else:
            for pointer, length in pieces:
                take = min(length, MAX_STDERR - len(self.stderr))
                if take > 0:
                    self.stderr += ctypes.string_at(base + pointer, take)
        ctypes.memmove(base + nwritten, _U32.pack(total), 4)
        return _ESUCCESS

    def clock_time_get(self, caller: wasmtime.Caller, clock: int, _precision: int, out: int) -> int:
        if not _CLOCK_REALTIME <= clock <= _CLOCK_THREAD_CPUTIME:
            return _EINVAL
        value = FIXED_REALTIME_NS if clock == _CLOCK_REALTIME else 0
        return self._store_u64(caller, out, value)

    def clock_res_get(self, caller: wasmtime.Caller, clock: int, out: int) -> int:
        if not _CLOCK_REALTIME <= clock <= _CLOCK_THREAD_CPUTIME:
            return _EINVAL
        return self._store_u64(caller, out, CLOCK_RESOLUTION_NS)

    def _store_u64(self, caller: wasmtime.Caller, out: int, value: int) -> int:
        base, size = self._region(caller)
        out &= 0xFFFFFFFF
        if out + 8 > size:
            return _EFAULT
        ctypes.memmove(base + out, _U64.pack(value), 8)
        return _ESUCCESS

    def random_get(self, caller: wasmtime.Caller, buf: int, length: int) -> int:
        base, size = self._region(caller)
        buf, length = buf & 0xFFFFFFFF, length & 0xFFFFFFFF
        if buf + length > size:
            return _EFAULT
        written = 0
        while written < length:
            block = min(_RANDOM_BLOCK, length - written)
            data = self._random.digest(length=block, seek=self._random_offset)
            ctypes.memmove(base + buf + written, data, block)
            self._random_offset += block
            written += block
        return _ESUCCESS

    @staticmethod
    def poll_oneoff(_in: int, _out: int, _subscriptions: int, _events: int) -> int:
        # Sleeping or waiting on descriptors: refused at once.  wasmtime's own
        # poll_oneoff blocks in the host, where no epoch deadline can reach it.
        return _ENOSYS

    @staticmethod
    def sched_yield() -> int:
        return _ESUCCESS


def define_host_functions(linker: wasmtime.Linker, host: HostIO) -> None:
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

    def define(name: str, params: list[wasmtime.ValType], function: Callable[..., int]) -> None:
        caller = name not in ("poll_oneoff", "sched_yield")
        linker.define_func(
            WASI_MODULE, name, wasmtime.FuncType(params, [i32]), function, access_caller=caller
        )

    define("fd_write", [i32, i32, i32, i32], host.fd_write)
    define("clock_time_get", [i32, i64, i32], host.clock_time_get)
    define("clock_res_get", [i32, i32], host.clock_res_get)
    define("random_get", [i32, i32], host.random_get)
    define("poll_oneoff", [i32, i32, i32, i32], host.poll_oneoff)
    define("sched_yield", [], host.sched_yield)
