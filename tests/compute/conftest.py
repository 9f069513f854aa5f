"""Shared set-up of the compute tests: example modules built from WAT, small limits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import wasmtime

from p2pshare.compute.sandbox import Sandbox

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"


@pytest.fixture(scope="session")
def wasm() -> Callable[[str], bytes]:
    """Build ``examples/wasm/NAME.wat`` (once per session) into module bytes."""
    built: dict[str, bytes] = {}

    def build(name: str) -> bytes:
        if name not in built:
            built[name] = bytes(wasmtime.wat2wasm((EXAMPLES / f"{name}.wat").read_text()))
        return built[name]

    return build


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box
