"""The uploader's chunk buffers: a few, shared by every stream of the daemon, lent in turn.

A seeder with a hundred downloaders used to hold a chunk read from disk and a sealed
copy of it for every connection whose peer had not yet drained the last one: about
2 MiB a connection, plus what the worker threads' malloc arenas kept of buffers they
allocated (docs/benchmarks.md, "Many downloaders").  Now a stream asks for a slot only
once its connection can take data at once (``wait_send_all_might_not_block``), reads
the chunk into the slot's buffer, hands it to the stream, and gives the slot back:
memory is ``SLOTS`` buffers whatever the number of peers, and the slots go round in
arrival order -- a round-robin upload scheduler, so no downloader is served twice
while another one waits.

Buffers up to ``KEEP_UP_TO`` bytes are kept for the next chunk; a larger chunk (shares
with chunks of up to 16 MiB) gets a buffer of its own for that one read.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# Each slot holds one chunk while it is read, sealed and handed to the kernel. With 8,
# 30 downloaders got 70 MB/s together, with 16 and 32 about 95 (bench/downloaders.py,
# docs/benchmarks.md): 16 buffers (32 MiB with their frames) whatever the crowd.
SLOTS: Final = 16
KEEP_UP_TO: Final = 1 << 20


class UploadSlots:
    """At most ``count`` chunks being read and handed to streams at once, lent FIFO."""

    def __init__(self, count: int = SLOTS) -> None:
        if count < 1:
            raise ValueError("at least one upload slot is needed")
        # trio's Semaphore wakes its waiters first come, first served.
        self._slots = trio.Semaphore(count)
        self._free: list[bytearray] = []

    @property
    def kept_bytes(self) -> int:
        """The buffers kept between chunks: at most one per slot."""
        return sum(len(buffer) for buffer in self._free)

    @asynccontextmanager
    async def lend(self, size: int) -> AsyncIterator[bytearray]:
        """A buffer of at least ``size`` bytes for one chunk, once a slot is free."""
        async with self._slots:
            buffer = self._take(size)
            try:
                yield buffer
            finally:
                if len(buffer) == KEEP_UP_TO:
                    self._free.append(buffer)

    def _take(self, size: int) -> bytearray:
        if size <= KEEP_UP_TO and self._free:
            return self._free.pop()
        return bytearray(max(size, KEEP_UP_TO))
