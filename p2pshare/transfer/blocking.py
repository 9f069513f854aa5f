"""Where a transfer's blocking calls run: disk reads, hashing and writing chunks, fsync.

The uploader and the downloader both take a :class:`RunBlocking`, by default a trio
worker thread.  Tests on trio's MockClock pass one that runs the call on the event
loop instead, so the clock cannot jump ahead while a thread is busy, and nothing
needs to patch trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_T = TypeVar("_T")


class RunBlocking(Protocol):
    """Runs a blocking call without blocking the event loop."""

    def __call__(self, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


async def run_in_thread(fn: Callable[[], _T]) -> _T:
    """The default RunBlocking: a trio worker thread (disk IO and hashing release the GIL)."""
    return await trio.to_thread.run_sync(fn)
