"""Send buffers lent per send, so their number follows the sends in flight, not the peers.

Each data-channel connection used to keep its own 1 MiB send buffer from its first send
to its close: a seeder with 100 downloaders held 100 MiB of buffers although only the
connections whose frame the kernel has not yet taken need one.  A :class:`BufferPool`
lends a buffer for one send and takes it back after; it keeps at most ``keep`` idle
buffers for the next sends, and frees the rest to the allocator.  How many sends are
in flight at once is bounded upstream (the uploader's send slots,
p2pshare.transfer.uploader.UploadLimiter), so the buffers in use are bounded too.

Plain Python, no trio: one event loop's tasks use it, and a buffer is lent to exactly
one of them until it is given back.
"""

from __future__ import annotations


class BufferPool:
    """Lends ``size``-byte buffers, each to one user at a time; keeps up to ``keep`` idle."""

    def __init__(self, size: int, keep: int) -> None:
        if size < 1 or keep < 0:
            raise ValueError(f"a pool needs size >= 1 and keep >= 0, not {size}, {keep}")
        self.size = size
        self.keep = keep
        self._idle: list[bytearray] = []
        # By identity: equal contents must not make two buffers one.
        self._lent: dict[int, bytearray] = {}

    @property
    def lent(self) -> int:
        """Buffers out now."""
        return len(self._lent)

    @property
    def idle(self) -> int:
        """Buffers kept for reuse."""
        return len(self._idle)

    def acquire(self) -> bytearray:
        """A buffer nobody else holds until it is released; reused when one is idle."""
        buffer = self._idle.pop() if self._idle else bytearray(self.size)
        self._lent[id(buffer)] = buffer
        return buffer

    def release(self, buffer: bytearray) -> None:
        """Give ``buffer`` back; ValueError if this pool did not lend it (or got it back)."""
        if self._lent.pop(id(buffer), None) is not buffer:
            raise ValueError("this buffer is not lent out by this pool")
        if len(self._idle) < self.keep:
            self._idle.append(buffer)
