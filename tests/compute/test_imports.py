"""The import allow-list, read from module bytes before anything is compiled."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.compute.errors import ForbiddenImportError, InvalidModuleError
from p2pshare.compute.imports import (
    ALLOWED_IMPORTS,
    MAX_MODULE_SIZE,
    WASI_MODULE,
    WASI_SHADOWED,
    ImportKind,
    WasmImport,
    check_module,
    read_imports,
)
from p2pshare.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Callable

EXAMPLES = [
    "catfile",
    "entropy",
    "escape",
    "flood",
    "fnv1a",
    "membomb",
    "recurse",
    "rot13",
    "sleep",
    "spin",
    "wordcount",
]


def _wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


@pytest.mark.parametrize("name", [*EXAMPLES, "socket"])
def test_imports_match_wasmtime(wasm: Callable[[str], bytes], name: str) -> None:
    module = wasmtime.Module(wasmtime.Engine(), wasm(name))
    assert [(item.module, item.name) for item in read_imports(wasm(name))] == [
        (item.module, item.name) for item in module.imports
    ]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_import_only_allowed_functions(wasm: Callable[[str], bytes], name: str) -> None:
    assert all(item.kind is ImportKind.FUNCTION for item in check_module(wasm(name)))


def test_socket_import_is_forbidden_and_named(wasm: Callable[[str], bytes]) -> None:
    with pytest.raises(ForbiddenImportError, match=r"wasi_snapshot_preview1\.sock_open") as info:
        check_module(wasm("socket"))
    assert info.value.imports == ("wasi_snapshot_preview1.sock_open",)
    assert isinstance(info.value, RemoteError)


@pytest.mark.parametrize(
    ("wat", "names"),
    [
        ('(import "env" "socket" (func))', ("env.socket",)),
        ('(import "env" "memory" (memory 1))', ("env.memory",)),
        (
            '(import "wasi_snapshot_preview1" "memory" (memory 1))',
            ("wasi_snapshot_preview1.memory",),
        ),
        ('(import "env" "t" (table 1 funcref))', ("env.t",)),
        ('(import "env" "g" (global i32))', ("env.g",)),
        (
            '(import "wasi_snapshot_preview1" "fd_read"'
            "  (func (param i32 i32 i32 i32) (result i32)))"
            '(import "wasi_snapshot_preview1" "path_unlink_file"'
            "  (func (param i32 i32 i32) (result i32)))"
            '(import "wasi_snapshot_preview1" "fd_readdir"'
            "  (func (param i32 i32 i32 i64 i32) (result i32)))"
            '(import "wasi_unstable" "fd_read" (func (param i32 i32 i32 i32) (result i32)))',
            (
                "wasi_snapshot_preview1.path_unlink_file",
                "wasi_snapshot_preview1.fd_readdir",
                "wasi_unstable.fd_read",
            ),
        ),
    ],
)
def test_everything_outside_the_allow_list_is_named(wat: str, names: tuple[str, ...]) -> None:
    with pytest.raises(ForbiddenImportError) as info:
        check_module(_wat(f"(module {wat})"))
    assert info.value.imports == names
    for name in names:
        assert name in str(info.value)


def test_allow_list_has_no_network_writes_or_threads() -> None:
    names = {name for module, name in ALLOWED_IMPORTS if module == WASI_MODULE}
    assert {module for module, _name in ALLOWED_IMPORTS} == {WASI_MODULE}
    assert not {name for name in names if name.startswith("sock_")}
    assert not names & {
        "path_create_directory",
        "path_link",
        "path_remove_directory",
        "path_rename",
        "path_symlink",
        "path_unlink_file",
        "fd_pwrite",
        "fd_allocate",
        "fd_filestat_set_size",
        "fd_readdir",
        "proc_raise",
        "thread-spawn",
    }
    assert names >= WASI_SHADOWED


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a WebAssembly module"),
        (b"hello world", "not a WebAssembly module"),
        (b'(module (func (export "_start")))', "not a WebAssembly module"),
        (b"\0asm\x0d\0\x01\0", "component"),
        (b"\0asm\x02\0\0\0", "version"),
        (b"\0asm\x01\0\0\0\x02\x05\x01", "ends in the middle"),
        (b"\0asm\x01\0\0\0\x02\x80\x80\x80\x80\x80\x01", "over-long"),
        (b"\0asm\x01\0\0\0\x02\x01\x00\x02\x01\x00", "two import sections"),
        (b"\0asm\x01\0\0\0\x02\x05\x01\x00\x00\x09\x00", "unknown kind"),
        (b"\0asm\x01\0\0\0\x02\x05\x7f\x00\x00\x00\x00", "shorter than its count"),
        (b"\0asm\x01\0\0\0\x02\x06\x01\x01\xff\x00\x00\x00", "UTF-8"),
        (b"\0asm\x01\0\0\0" + b"\0" * MAX_MODULE_SIZE, "more than"),
    ],
)
def test_malformed_modules_are_invalid(data: bytes, match: str) -> None:
    with pytest.raises(InvalidModuleError, match=match):
        read_imports(data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_only_typed_errors(tail: bytes) -> None:
    for data in (tail, b"\0asm\x01\0\0\0" + tail):
        with contextlib.suppress(InvalidModuleError, ForbiddenImportError):
            check_module(data)


def test_import_prints_as_module_dot_name() -> None:
    assert str(WasmImport("env", "socket", ImportKind.FUNCTION)) == "env.socket"
