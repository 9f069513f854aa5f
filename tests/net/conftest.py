"""In-process libp2p hosts.

py-libp2p 0.8.1 leaks the socket of an outbound dial that is cancelled during its
upgrade (DHT lookups dial peers in the background, and the test ends while one is
in flight). Our own code closes every connection it owns (net.host._close). Each
test here collects garbage on teardown so such a leak is reported inside the test
that caused it, where the narrow filter below applies, and never in another module.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

LIBP2P_SOCKET_LEAK = [
    "ignore:unclosed <socket.socket:ResourceWarning",
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/net/" in str(item.path):
            for spec in LIBP2P_SOCKET_LEAK:
                item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture(autouse=True)
def _collect_leaks() -> Iterator[None]:
    yield
    gc.collect()
