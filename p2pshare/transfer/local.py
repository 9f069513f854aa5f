"""A ``get`` of content this node already holds: copied from its own store, in process.

The store is handed to the downloader as one more provider, reached through an
in-memory pipe instead of the network, served by the same uploader code
(serve_transfer) from :class:`~p2pshare.transfer.source.StoredContent`.  So the copy
gets everything a network download gets: every chunk verified against the signed
manifest before it reaches its place (a shared file changed on disk since it was
hashed is caught), the rules of what ``-o`` may replace, the user's umask, the
free-space check, resumption.  Nothing goes over the network, and the upload rate
limit does not apply (nothing is uploaded).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from p2pshare.net.streams import ByteStream
    from p2pshare.transfer.source import ContentSource

log = logging.getLogger(__name__)
# Messages in flight one way; the uploader's own window bounds what it sends ahead.
_PIPE_DEPTH = 16


class PipeEnd:
    """One end of an in-memory byte pipe (a ByteStream); ``b""`` once the other end closed."""

    def __init__(
        self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = memoryview(b"")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._buffer:
            try:
                self._buffer = memoryview(await self._receive.receive())
            except trio.EndOfChannel:
                return b""
        size = len(self._buffer) if max_bytes is None else max_bytes
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            await self._send.send(bytes(data))

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def pipe() -> tuple[PipeEnd, PipeEnd]:
    """Two connected ends: what one sends, the other receives."""
    there, from_here = trio.open_memory_channel[bytes](_PIPE_DEPTH)
    back, from_there = trio.open_memory_channel[bytes](_PIPE_DEPTH)
    return PipeEnd(there, from_there), PipeEnd(back, from_here)


async def open_local(nursery: trio.Nursery, content: ContentSource) -> ByteStream:
    """A transfer stream to ``content`` served in ``nursery``, as a provider's would be."""
    client, server = pipe()
    nursery.start_soon(_serve, server, content)
    return client


async def _serve(stream: PipeEnd, content: ContentSource) -> None:
    try:
        await serve_transfer(stream, content, peer="this node's store")
    except Exception as exc:  # noqa: BLE001 - the downloader sees the closed pipe and says why
        log.debug("serving from this node's store ended: %s", exc)
    finally:
        await stream.aclose()
