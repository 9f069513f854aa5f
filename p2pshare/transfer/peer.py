"""The downloader's side of one transfer stream to one provider.

Thin shell over :class:`p2pshare.proto.transfer.ClientSession`: a reader task
decodes what the provider sends and hands each response to the task that made the
request, so several requests can be in flight on one stream (pipelining).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from p2pshare.errors import RemoteError, RemoteProtocolError
from p2pshare.metrics import METRICS
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.transfer import (
    MAX_HAVE_CHUNKS,
    ChunkData,
    ClientRequest,
    ClientSession,
    ErrorReply,
    HaveReply,
    ManifestReply,
    Message,
    PageReply,
    Response,
    Role,
    TransferDecoder,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.cid import ContentId

log = logging.getLogger(__name__)
RECEIVE_SIZE = 1 << 20
# Seconds a CANCEL may wait to be sent (behind a chunk request on a full stream).
CANCEL_SEND_LIMIT = 5.0


class PeerGoneError(RemoteError):
    """The provider closed the stream or broke the protocol; nothing more will come."""


@dataclass
class _Waiter:
    send: trio.MemorySendChannel[Response]


class PeerLink:
    """One pipelined transfer stream; use inside ``async with`` or run ``run`` in a nursery."""

    def __init__(self, stream: ByteStream, peer_id: str, *, max_chunk_size: int) -> None:
        self.peer_id = peer_id
        self._stream = stream
        self._session = ClientSession()
        self._decoder = TransferDecoder(Role.CLIENT, max_chunk_size=max_chunk_size)
        self._waiters: dict[int, _Waiter] = {}
        self._send_lock = trio.Lock()
        self._capacity = trio.Condition()
        self._failure: RemoteError | None = None
        self.bytes_received = 0

    async def _send(self, message: Message) -> None:
        """Send ``message``; a link closed or broken meanwhile (also while this waited
        for another send) fails it as the peer gone, never as trio's error, which the
        download would take for a bug of ours."""
        async with self._send_lock:
            if self._failure is not None:
                raise self._failure
            try:
                await self._stream.send_all(encode(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                gone = PeerGoneError(f"{self.peer_id}: stream closed ({exc!r})")
                self._fail(gone)
                raise self._failure or gone from exc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send HELLO, then route every response until the stream ends."""
        await self._send(self._session.hello())
        task_status.started()
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise PeerGoneError(f"{self.peer_id} closed the transfer stream")
                self._decoder.feed(data)
                while (message := self._decoder.next_message()) is not None:
                    response = self._session.receive(message)
                    if response is not None:
                        await self._deliver(response)
        except RemoteError as exc:
            self._fail(exc if isinstance(exc, PeerGoneError) else PeerGoneError(str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(PeerGoneError(f"{self.peer_id}: stream closed ({exc!r})"))
        finally:
            self._fail(PeerGoneError(f"{self.peer_id}: the transfer stream ended"))

    def _fail(self, exc: PeerGoneError) -> None:
        if self._failure is None:
            self._failure = exc
        for waiter in self._waiters.values():
            waiter.send.close()
        self._waiters.clear()

    async def _deliver(self, response: Response) -> None:
        if isinstance(response.message, ChunkData):
            self.bytes_received += len(response.message.payload)
            METRICS.received(self.peer_id, len(response.message.payload))
        waiter = self._waiters.get(response.request.req_id)
        if waiter is not None:
            try:
                await waiter.send.send(response)
            except trio.BrokenResourceError:
                # Its reader left (a cancelled request): what still comes is dropped.
                self._waiters.pop(response.request.req_id, None)
        if response.finished:
            if waiter is not None:
                waiter.send.close()
            # Closing the link while the send above waited has dropped every waiter.
            self._waiters.pop(response.request.req_id, None)
            async with self._capacity:
                self._capacity.notify_all()

    async def _cancel(self, req_id: int) -> None:
        """Ask the provider to stop a request nobody reads any more; what it sent
        before the CANCEL reached it is dropped on arrival."""
        self._waiters.pop(req_id, None)
        cancel = self._session.cancel(req_id)
        if cancel is None or self._failure is not None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_SEND_LIMIT):
            try:
                await self._send(cancel)
            except RemoteError as exc:
                log.debug("CANCEL to %s not sent: %s", self.peer_id, exc)

    async def aclose(self) -> None:
        self._fail(PeerGoneError(f"{self.peer_id}: closed by us"))
        await self._stream.aclose()

    async def _start(
        self, make: Callable[[], ClientRequest]
    ) -> tuple[int, trio.MemoryReceiveChannel[Response]]:
        if self._failure is not None:
            raise self._failure
        async with self._capacity:
            while not self._session.can_request:
                await self._capacity.wait()
                if self._failure is not None:
                    raise self._failure
        request = make()
        send, receive = trio.open_memory_channel[Response](64)
        self._waiters[request.req_id] = _Waiter(send)
        await self._send(request)
        return request.req_id, receive

    async def _single(self, make: Callable[[], ClientRequest]) -> Response:
        _, receive = await self._start(make)
        async with receive:
            async for response in receive:
                if isinstance(response.message, ErrorReply):
                    raise response.message.exception()
                return response
        raise self._failure or PeerGoneError(f"{self.peer_id} went away")

    async def manifest(self, cid: ContentId) -> bytes:
        response = await self._single(partial(self._session.get_manifest, cid))
        assert isinstance(response.message, ManifestReply)
        return response.message.data

    async def page(self, cid: ContentId, page_index: int) -> bytes:
        response = await self._single(partial(self._session.get_page, cid, page_index))
        assert isinstance(response.message, PageReply)
        return response.message.page

    async def have(self, cid: ContentId, total: int) -> Bitfield:
        """Which of the ``total`` chunks the provider holds (asked range by range)."""
        result = Bitfield(total)
        for first in range(0, total, MAX_HAVE_CHUNKS):
            count = min(MAX_HAVE_CHUNKS, total - first)
            response = await self._single(partial(self._session.get_have, cid, first, count))
            assert isinstance(response.message, HaveReply)
            for offset in response.message.have.iter_set():
                result.set(first + offset)
        return result

    async def chunks(
        self, cid: ContentId, run: range, chunk_length: Callable[[int], int]
    ) -> AsyncGenerator[tuple[int, memoryview], None]:
        """Yield ``(index, payload)`` for each chunk of ``run`` as it arrives.

        Left before the last chunk (closed, or cancelled: another provider delivered
        them first), the provider is told to stop sending the rest.
        """
        req_id, receive = await self._start(
            partial(self._session.get_chunks, cid, run.start, len(run), chunk_length)
        )
        delivered = 0
        try:
            async with receive:
                async for response in receive:
                    message = response.message
                    if isinstance(message, ErrorReply):
                        raise message.exception()
                    if not isinstance(message, ChunkData):
                        raise RemoteProtocolError("a chunk request was answered with metadata")
                    delivered += 1
                    # No copy: the decoder's payloads are views of memory nothing writes
                    # to again (the received bytes, or a buffer it handed over), so they
                    # stay unchanged across the awaits between here and the hash check
                    # and write.
                    yield message.chunk_index, memoryview(message.payload)
        finally:
            if delivered != len(run):
                await self._cancel(req_id)
        if delivered != len(run):
            raise self._failure or PeerGoneError(f"{self.peer_id} went away mid-request")
