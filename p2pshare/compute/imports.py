"""What a job module may import, checked by reading the module's bytes in pure Python.

A job is refused before wasmtime compiles it when it is not a WebAssembly core
module or imports anything outside :data:`ALLOWED_IMPORTS`.  Reading the import
section takes microseconds, while compiling a hostile module can take seconds,
and the daemon can run this check itself before handing the job to a worker
process.  The sandbox checks the compiled module's import list once more
(``wasmtime.Module.imports``), so a disagreement between this parser and
wasmtime's cannot let a forbidden import through.

Only functions of ``wasi_snapshot_preview1`` are allowed, and of those only the
ones a program needs to read stdin and its read-only inputs, write stdout and
stderr, and learn its arguments (docs/compute.md, "Allowed imports").  Sockets,
writes to files, directory listings (their order differs between file systems),
threads and everything outside WASI are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from p2pshare.compute.errors import ForbiddenImportError, InvalidModuleError

WASI_MODULE: Final = "wasi_snapshot_preview1"

# Implemented by the real WASI of wasmtime, confined to a read-only preopened directory.
_WASI_PASSTHROUGH: Final = frozenset(
    {
        "args_get",
        "args_sizes_get",
        "environ_get",
        "environ_sizes_get",
        "fd_close",
        "fd_fdstat_get",
        "fd_filestat_get",
        "fd_pread",
        "fd_prestat_dir_name",
        "fd_prestat_get",
        "fd_read",
        "fd_seek",
        "fd_tell",
        "path_filestat_get",
        "path_open",
        "proc_exit",
    }
)
# Replaced by the sandbox's own functions (p2pshare.compute.sandbox): stdout and
# stderr with caps, a clock that stands still, random bytes seeded from the job ID,
# and a poll_oneoff that fails at once instead of sleeping.
WASI_SHADOWED: Final = frozenset(
    {
        "clock_res_get",
        "clock_time_get",
        "fd_write",
        "poll_oneoff",
        "random_get",
        "sched_yield",
    }
)
ALLOWED_IMPORTS: Final = frozenset(
    (WASI_MODULE, name) for name in _WASI_PASSTHROUGH | WASI_SHADOWED
)

MAX_MODULE_SIZE: Final = 8 * 1024 * 1024
WASM_MAGIC: Final = b"\0asm"
CORE_VERSION: Final = b"\x01\0\0\0"
# The component-model layer uses the same magic with another version/layer field.
_COMPONENT_VERSION: Final = b"\x0d\0\x01\0"
_IMPORT_SECTION: Final = 2
# Listed in an error: more would not help anyone read it.
_MAX_NAMED: Final = 8


class ImportKind(IntEnum):
    FUNCTION = 0
    TABLE = 1
    MEMORY = 2
    GLOBAL = 3
    TAG = 4


@dataclass(frozen=True)
class WasmImport:
    module: str
    name: str
    kind: ImportKind

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


class _Reader:
    """A cursor over module bytes; every malformation is an InvalidModuleError."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise InvalidModuleError("the module ends in the middle of a section")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        for _ in range((bits + 6) // 7):
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if result >> bits:
                    raise InvalidModuleError("the module holds an integer out of range")
                return result
            shift += 7
        raise InvalidModuleError("the module holds an over-long integer")

    def skip(self, count: int) -> None:
        if count > self.end - self.pos:
            raise InvalidModuleError("the module ends in the middle of a section")
        self.pos += count

    def name(self) -> str:
        length = self.uleb()
        start = self.pos
        self.skip(length)
        try:
            return self.data[start : self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidModuleError("an import name is not valid UTF-8") from None


def _check_header(wasm: bytes) -> None:
    if len(wasm) > MAX_MODULE_SIZE:
        raise InvalidModuleError(
            f"the module has {len(wasm)} bytes, more than the {MAX_MODULE_SIZE} allowed"
        )
    if wasm[:4] != WASM_MAGIC:
        raise InvalidModuleError("this is not a WebAssembly module (no \\0asm header)")
    version = wasm[4:8]
    if version == _COMPONENT_VERSION:
        raise InvalidModuleError(
            "this is a WebAssembly component; jobs are core modules (wasm32-wasip1)"
        )
    if version != CORE_VERSION:
        raise InvalidModuleError(f"WebAssembly version {version.hex()} is not supported")


def _skip_reftype(reader: _Reader) -> None:
    code = reader.byte()
    # 0x63/0x64: (ref null? heaptype) of the function-references proposal.
    if code in (0x63, 0x64):
        reader.uleb(33)


def _skip_limits(reader: _Reader) -> None:
    flags = reader.byte()
    if flags > 0x0F:
        raise InvalidModuleError("the module holds a malformed limits field")
    reader.uleb(64)
    if flags & 0x01:
        reader.uleb(64)
    if flags & 0x08:  # custom page size
        reader.uleb()


def _skip_descriptor(reader: _Reader, kind: ImportKind) -> None:
    """Step over an import's type; only functions are ever allowed."""
    match kind:
        case ImportKind.FUNCTION:
            reader.uleb()
        case ImportKind.TABLE:
            _skip_reftype(reader)
            _skip_limits(reader)
        case ImportKind.MEMORY:
            _skip_limits(reader)
        case ImportKind.GLOBAL:
            _skip_reftype(reader)
            reader.byte()
        case ImportKind.TAG:
            reader.byte()
            reader.uleb()


def read_imports(wasm: bytes) -> list[WasmImport]:
    """The imports of a core module, in order; InvalidModuleError if it is not one.

    Checks the header and the section layout of the whole module, and the import
    section in full; everything else is left to wasmtime's validation.
    """
    _check_header(wasm)
    reader = _Reader(wasm, 8)
    imports: list[WasmImport] = []
    seen_import_section = False
    while reader.pos < reader.end:
        section = reader.byte()
        size = reader.uleb()
        start = reader.pos
        reader.skip(size)
        if section != _IMPORT_SECTION:
            continue
        if seen_import_section:
            raise InvalidModuleError("the module has two import sections")
        seen_import_section = True
        imports = _read_import_section(_Reader(wasm, start, start + size))
    return imports


def _read_import_section(reader: _Reader) -> list[WasmImport]:
    count = reader.uleb()
    # Each import takes at least four bytes: a cheap bound before allocating anything.
    if count > (reader.end - reader.pos) // 4:
        raise InvalidModuleError("the import section is shorter than its count")
    imports = []
    for _ in range(count):
        module = reader.name()
        name = reader.name()
        code = reader.byte()
        try:
            kind = ImportKind(code)
        except ValueError:
            raise InvalidModuleError(f"import {module}.{name} has unknown kind {code}") from None
        _skip_descriptor(reader, kind)
        imports.append(WasmImport(module, name, kind))
    if reader.pos != reader.end:
        raise InvalidModuleError("the import section has bytes after its last import")
    return imports


def is_allowed(module: str, name: str, kind: ImportKind = ImportKind.FUNCTION) -> bool:
    return kind is ImportKind.FUNCTION and (module, name) in ALLOWED_IMPORTS


def forbidden_error(names: list[str]) -> ForbiddenImportError:
    shown = ", ".join(names[:_MAX_NAMED]) + (", ..." if len(names) > _MAX_NAMED else "")
    noun = "import" if len(names) == 1 else "imports"
    return ForbiddenImportError(
        f"the module has the forbidden {noun} {shown}; jobs may import only the WASI "
        f"functions listed in docs/compute.md (no sockets, no file writes, no host calls)",
        tuple(names),
    )


def check_module(wasm: bytes) -> list[WasmImport]:
    """The module's imports if every one is allowed.

    Raises InvalidModuleError when ``wasm`` is not a core module, ForbiddenImportError
    naming every import outside the allow-list otherwise.
    """
    imports = read_imports(wasm)
    forbidden = [str(item) for item in imports if not is_allowed(item.module, item.name, item.kind)]
    if forbidden:
        raise forbidden_error(forbidden)
    return imports
