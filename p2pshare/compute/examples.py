"""The example WebAssembly programs shipped with p2pshare, kept as WAT text.

Used by ``demo``, the tests, the benchmarks and the docs.  Building one imports
wasmtime, so only callers that need module bytes pay for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

WAT_DIR: Final = Path(__file__).resolve().parent / "wasm"
_WHERE: Final = re.compile(r"\s*-->\s*.*:(\d+):(\d+)\s*$")


def example_names() -> list[str]:
    return sorted(path.stem for path in WAT_DIR.glob("*.wat"))


def example_wat(name: str) -> str:
    return (WAT_DIR / f"{name}.wat").read_text(encoding="utf-8")


def wat_to_wasm(text: str) -> bytes:
    """Assemble WAT text into module bytes; ValueError says what is wrong with the text."""
    import wasmtime  # noqa: PLC0415 - a 100 ms import only the callers that build pay for

    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise ValueError(wat_error(str(exc))) from None


def wat_error(text: str) -> str:
    """wasmtime's multi-line WAT error as one sentence that keeps its line and column.

    The error reads ``MESSAGE\n --> <anon>:LINE:COLUMN\n | ...`` (a rustc-style snippet).
    """
    lines = text.splitlines()
    message = lines[0] if lines else "cannot be assembled"
    where = next((m for line in lines[1:] if (m := _WHERE.match(line))), None)
    return f"line {where[1]}, column {where[2]}: {message}" if where else message


def example_module(name: str) -> bytes:
    """The module bytes of example ``name`` (see :func:`example_names`)."""
    return wat_to_wasm(example_wat(name))
