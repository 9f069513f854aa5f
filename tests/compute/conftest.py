"""Shared set-up of the compute tests: example modules built from WAT, small limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.compute.examples import example_module
from p2pshare.compute.sandbox import Sandbox

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(scope="session")
def wasm() -> Callable[[str], bytes]:
    """Build ``p2pshare/compute/wasm/NAME.wat`` (once per session) into module bytes."""
    built: dict[str, bytes] = {}

    def build(name: str) -> bytes:
        if name not in built:
            built[name] = example_module(name)
        return built[name]

    return build


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box
