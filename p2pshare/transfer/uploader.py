"""The uploader: serves one transfer stream from a ContentSource (docs/transfer-protocol.md).

A thin trio shell around the sans-IO ``ServerSession`` of p2pshare.proto.transfer.
Each stream runs two tasks:

* the **reader** receives bytes, decodes messages and hands them to the session.  It
  answers HELLO and BUSY itself, records CANCELs at once (even while a long REQUEST
  is being sent) and puts every accepted request on a queue;
* the **writer** serves the queued requests one at a time, in arrival order: the
  metadata replies, or a REQUEST chunk by chunk.  For each chunk it waits until the
  connection could take it at once, then takes one of the daemon's few
  :class:`~p2pshare.transfer.upload_slots.UploadSlots` (in turn with every other
  stream), reads the chunk into the slot's buffer (on the event loop when the page
  cache holds it, in a worker thread otherwise), paces it by the daemon-wide
  :class:`UploadLimiter` and hands it to the stream; a slow downloader holds no
  buffer while it drains.

Both send through one lock, so frames never interleave.  Nothing grows without bound:
the session accepts at most ``max_outstanding`` requests (the queue's capacity, so the
reader never waits for the writer and a CANCEL is always seen at once) and answers the
rest with BUSY; the decoder holds at most one partial control frame.  ``send_all``
blocks while the client does not read, and the reader blocks as soon as it has to
answer something (a BUSY) behind a stuck frame, so a client that pipelines requests
and never reads gets a stalled stream, not a growing server buffer.

``serve_transfer`` returns normally once the client has closed its side (EOF) and
every request it sent has been answered: the stream is then at a frame boundary and
may be closed gracefully.  Any other end raises, and the caller must reset the stream:
a protocol violation raises the RemoteError (after sending the closing ERROR 0 when the
stream allows it), a broken stream raises the stream's error, a bug raises itself
(after a closing ERROR 0 ``internal``).  ``HandlerGuard`` in p2pshare.net.streams does
exactly that.  Only this one stream is affected.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from p2pshare.errors import RemoteProtocolError, WouldBlockError
from p2pshare.metrics import METRICS
from p2pshare.net.streams import SendsBehind
from p2pshare.proto.framing import HEADER_SIZE
from p2pshare.proto.ratelimit import TokenBucket
from p2pshare.proto.signed_manifest import decode_signed_manifest
from p2pshare.proto.transfer import (
    DATA_HEADER_SIZE,
    MAX_OUTSTANDING_REQUESTS,
    BadRequestError,
    ChunkRequest,
    ClientRequest,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    Message,
    PageReply,
    PeerInternalError,
    Reply,
    RequestCancelledError,
    Role,
    ServerSession,
    TransferDecoder,
    TransferError,
    closing_error,
    encode,
    encode_data_header,
)
from p2pshare.transfer.blocking import RunBlocking, run_in_thread
from p2pshare.transfer.upload_slots import UploadSlots

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.chunks import BytesLike
    from p2pshare.proto.cid import ContentId
    from p2pshare.transfer.source import ContentSource

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Clients send only control frames (a few dozen bytes each, 64 KiB at most).
_RECEIVE_SIZE: Final = 64 * 1024
# Below this a DATA frame goes out as one joined buffer, above it as header and chunk
# in two send_all calls: on a socket the copy costs more than the extra call from about
# 512 KiB on, and on a py-libp2p stream both ways run at the same speed for 1 MiB
# chunks, while for 16 KiB chunks one joined write is twice as fast everywhere.
_JOIN_BELOW: Final = 512 * 1024
# Bytes of a DATA frame besides its chunk: the length prefix and the DATA header.
DATA_FRAME_OVERHEAD: Final = HEADER_SIZE + DATA_HEADER_SIZE
# How long a failing stream may wait for the frame being written to finish, so that
# its closing ERROR 0 can follow it; past that the stream is reset without one.  Longer
# than the data channel's FIN_GRACE: the frame in flight may be a whole chunk (up to
# 16 MiB) on a slow link, where a FIN is a few bytes.
ABORT_GRACE: Final = 5.0
# Share shapes (chunk and page counts) kept for range checks: a content ID names the
# exact bytes of its manifest, so an entry never goes stale.  Kept per stream: a shape
# comes from the source, whose access check (a job output is its requester's only)
# depends on the peer, and a range error must not reveal it to anyone else.
_SHAPE_CACHE_SIZE: Final = 64
# The shortest wait of UploadLimiter, so float rounding cannot make it spin.
_MIN_WAIT: Final = 0.001


# --- the daemon-wide upload cap ------------------------------------------------------


class UploadLimiter:
    """Caps the bytes per second all transfer streams of a daemon upload together.

    ``rate`` None or 0 means unlimited.  The burst is one second's worth, or the
    largest single acquisition seen, so a chunk larger than a second's worth still
    goes out (after the wait its size calls for) instead of waiting forever.  Waiters
    are served first come, first served; ``set_rate`` takes effect at once, also for
    a stream already waiting.
    """

    def __init__(self, rate: float | None = None) -> None:
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._bucket: TokenBucket | None = None
        self._rate: float | None = None
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        """Bytes per second, or None when unlimited."""
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the cap (bytes per second; None or 0 for unlimited)."""
        if rate is not None and (not math.isfinite(rate) or rate < 0):
            raise ValueError(f"an upload rate is a finite number of bytes/s >= 0, not {rate!r}")
        new_rate = float(rate) if rate else None
        bucket = self._bucket
        if new_rate is None:
            self._bucket = None
        elif bucket is None:
            self._bucket = TokenBucket(new_rate, max(new_rate, 1.0))
        else:
            # Settle the tokens earned so far at the old rate before switching.
            bucket.take(trio.current_time(), 0)
            bucket.rate = new_rate
            bucket.burst = max(new_rate, 1.0)
        self._rate = new_rate
        self._changed.set()
        self._changed = trio.Event()

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more bytes may be sent, and count them as sent."""
        if nbytes <= 0 or self._bucket is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            while (bucket := self._bucket) is not None:
                bucket.burst = max(bucket.burst, float(nbytes))
                if bucket.take(trio.current_time(), nbytes):
                    return
                changed = self._changed
                with trio.move_on_after(max(bucket.delay_for(nbytes), _MIN_WAIT)):
                    await changed.wait()


# --- share shapes, for range checks --------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    total_chunks: int
    pages: int
    chunk_size: int


class _ShapeCache:
    """A small LRU of share shapes, touched only from trio tasks (no lock needed)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[ContentId, _Shape] = OrderedDict()

    def get(self, cid: ContentId) -> _Shape | None:
        shape = self._entries.get(cid)
        if shape is not None:
            self._entries.move_to_end(cid)
        return shape

    def put(self, cid: ContentId, shape: _Shape) -> None:
        self._entries[cid] = shape
        self._entries.move_to_end(cid)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _read_shape(source: ContentSource, cid: ContentId) -> _Shape:
    manifest = decode_signed_manifest(source.signed_manifest(cid), cid).manifest
    return _Shape(manifest.total_chunks, len(manifest.page_hashes), manifest.chunk_size)


# --- serving one stream --------------------------------------------------------------


async def serve_transfer(
    stream: ByteStream,
    source: ContentSource,
    *,
    limiter: UploadLimiter | None = None,
    slots: UploadSlots | None = None,
    peer: str = "?",
    max_outstanding: int = MAX_OUTSTANDING_REQUESTS,
    run_blocking: RunBlocking = run_in_thread,
) -> None:
    """Serve one transfer stream until the client closes it (see the module docstring).

    ``slots`` are the daemon's chunk buffers, shared by all its streams (None: one of
    this stream's own).  ``peer`` names the client in log lines.  ``run_blocking``
    runs each ContentSource call; the default is a worker thread (tests with a mock
    clock run them inline).  Returns on the client's EOF once everything asked is
    answered; raises otherwise, and the caller then resets the stream.
    """
    server = TransferServer(
        stream,
        source,
        limiter=limiter,
        slots=slots,
        peer=peer,
        max_outstanding=max_outstanding,
        run_blocking=run_blocking,
    )
    await server.run()


class TransferServer:
    """The uploader's side of one transfer stream; ``run`` it once."""

    def __init__(
        self,
        stream: ByteStream,
        source: ContentSource,
        *,
        limiter: UploadLimiter | None = None,
        slots: UploadSlots | None = None,
        peer: str = "?",
        max_outstanding: int = MAX_OUTSTANDING_REQUESTS,
        run_blocking: RunBlocking = run_in_thread,
    ) -> None:
        self._stream = stream
        # A stream that copies what it cannot send at once (the data channel) gets the
        # slot's buffer itself; any other gets a copy, so the slot is never held while
        # a slow peer drains (a libp2p stream waits for its peer's window).
        self._behind = stream if isinstance(stream, SendsBehind) else None
        self._source = source
        self._limiter = limiter
        self._slots = slots or UploadSlots(1)
        self._peer = peer
        self._run_blocking = run_blocking
        self._session = ServerSession(max_outstanding=max_outstanding)
        self._decoder = TransferDecoder(Role.SERVER)
        # The session never has more than max_outstanding requests accepted and not
        # yet ended, so the reader's send_nowait always finds room.
        self._queue_in, self._queue_out = trio.open_memory_channel[ClientRequest](max_outstanding)
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._failure: Exception | None = None
        # The output can no longer carry a frame: a send broke off, or the stream failed.
        self._unusable = False
        # The client sent ERROR 0: it is closing, so no closing ERROR goes back.
        self._peer_closing = False
        # A closing ERROR 0 went out (or is going out): nothing may follow it.
        self._closed = False
        self._ran = False
        self._shapes = _ShapeCache(_SHAPE_CACHE_SIZE)

    async def run(self) -> None:
        if self._ran:
            raise RuntimeError("a TransferServer serves one stream once")
        self._ran = True
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._guarded, self._write_loop)
            await self._guarded(self._read_loop)
        if self._failure is not None:
            raise self._failure
        log.debug("transfer stream from %s ended by the client", self._peer)

    async def _guarded(self, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except Exception as exc:  # noqa: BLE001 -- run() raises it once both tasks stopped
            await self._abort(exc)

    async def _abort(self, exc: Exception) -> None:
        """Stop both tasks; first send the closing ERROR 0 if the stream can carry it."""
        first = self._failure is None
        if first:
            self._failure = exc
        with trio.CancelScope(shield=True), trio.move_on_after(ABORT_GRACE):
            # Waiting for the lock lets a frame being written finish first.
            async with self._send_lock:
                self._scope.cancel()
                if first and not (self._unusable or self._peer_closing or self._closed):
                    self._closed = True
                    try:
                        await self._write(encode(closing_error(exc)))
                    except Exception as send_exc:  # noqa: BLE001 -- the stream is being reset
                        log.debug("closing ERROR to %s not sent: %r", self._peer, send_exc)
        self._closed = True
        self._scope.cancel()

    # -- sending

    async def _write(self, *parts: BytesLike, behind: bool = False) -> None:
        """Send one frame in ``parts``; the caller holds the send lock.  ``behind``: the
        last part through ``send_behind`` (only when the stream SendsBehind)."""
        try:
            for i, part in enumerate(parts):
                if behind and self._behind is not None and i == len(parts) - 1:
                    await self._behind.send_behind(part)
                else:
                    await self._stream.send_all(part)
        except BaseException:
            # Part of a frame may be out: nothing sent after it would parse.
            self._unusable = True
            raise

    async def _send_frame(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._closed:
                await trio.lowlevel.checkpoint()
                return
            await self._write(frame)

    async def _send_data(self, req_id: int, chunk_index: int, payload: BytesLike) -> None:
        header = encode_data_header(req_id, chunk_index, len(payload))
        async with self._send_lock:
            if self._closed:
                await trio.lowlevel.checkpoint()
                return
            if len(payload) < _JOIN_BELOW:
                await self._write(b"".join((header, payload)), behind=True)
            else:
                await self._write(header, payload, behind=True)
        METRICS.sent(self._peer, len(payload))

    async def _until_writable(self) -> None:
        """Wait, holding nothing shared, until the stream could take a chunk at once."""
        await self._on_behind(lambda stream: stream.wait_send_all_might_not_block())

    async def _flush(self) -> None:
        """Send what the stream kept of the last chunk, before waiting for requests."""
        await self._on_behind(lambda stream: stream.flush())

    async def _on_behind(self, operation: Callable[[SendsBehind], Awaitable[None]]) -> None:
        """``operation`` on a stream that SendsBehind, under the send lock, unless a
        closing ERROR went out; a failure makes the output unusable, as in ``_write``."""
        if self._behind is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._send_lock:
            if self._closed:
                await trio.lowlevel.checkpoint()
                return
            try:
                await operation(self._behind)
            except BaseException:
                self._unusable = True
                raise

    # -- the reader

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except Exception:
                self._unusable = True
                raise
            if not data:
                if self._decoder.buffered:
                    raise RemoteProtocolError("the client closed the stream inside a frame")
                self._queue_in.close()
                return
            self._decoder.feed(data)
            while (message := self._decoder.next_message()) is not None:
                await self._handle(message)

    async def _handle(self, message: Message) -> None:
        if isinstance(message, ErrorReply) and message.req_id == 0:
            self._peer_closing = True
        answer = self._session.receive(message)
        if answer is None:
            return
        if isinstance(answer, Hello):
            await self._send_frame(encode(answer))
        elif isinstance(answer, ErrorReply):
            log.debug("transfer from %s: request %d refused: busy", self._peer, answer.req_id)
            await self._send_frame(encode(answer))
        else:
            self._queue_in.send_nowait(answer)

    # -- the writer

    async def _write_loop(self) -> None:
        async with self._queue_out:
            async for request in self._queue_out:
                await self._serve(request)
                if not self._queue_out.statistics().current_buffer_used:
                    await self._flush()

    async def _serve(self, request: ClientRequest) -> None:
        if isinstance(request, ChunkRequest):
            await self._serve_chunks(request)
            return
        try:
            if self._session.cancelled(request.req_id):
                raise RequestCancelledError("cancelled by the client")
            reply = await self._metadata(request)
        except TransferError as exc:
            await self._refuse(request, exc)
            return
        frame = encode(reply)
        if self._limiter is not None:
            await self._limiter.acquire(len(frame))
        answer = self._session.reply(reply)
        await self._send_frame(frame if answer is reply else encode(answer))

    async def _metadata(self, request: GetManifest | GetPage | GetHave) -> Reply:
        source, cid = self._source, request.cid
        if isinstance(request, GetManifest):
            data = await self._call(lambda: source.signed_manifest(cid), cid)
            return ManifestReply(request.req_id, cid, data)
        shape = await self._shape(cid)
        if isinstance(request, GetPage):
            page_index = request.page_index
            if page_index >= shape.pages:
                raise BadRequestError(f"{cid} has {shape.pages} hash pages, no page {page_index}")
            page = await self._call(lambda: source.page(cid, page_index), cid)
            return PageReply(request.req_id, cid, page_index, page)
        first, count = request.first_chunk, request.count
        _check_range(cid, shape, first, count)
        have = await self._call(lambda: source.have(cid, first, count), cid)
        return HaveReply(request.req_id, cid, first, have)

    async def _serve_chunks(self, request: ChunkRequest) -> None:
        req_id, cid = request.req_id, request.cid
        sent = 0
        try:
            if self._session.cancelled(req_id):
                raise RequestCancelledError("cancelled by the client")
            shape = await self._shape(cid)
            _check_range(cid, shape, request.first_chunk, request.count)
            for index in request.chunks:
                if self._session.cancelled(req_id):
                    raise RequestCancelledError("cancelled by the client")
                await self._until_writable()
                if not await self._send_chunk(req_id, cid, index, shape.chunk_size):
                    break
                sent += 1
        except TransferError as exc:
            await self._refuse(request, exc)
        log.debug(
            "transfer to %s: request %d for %d chunks of %s from %d: %d sent",
            self._peer,
            req_id,
            request.count,
            cid,
            request.first_chunk,
            sent,
        )

    async def _send_chunk(self, req_id: int, cid: ContentId, index: int, size: int) -> bool:
        """Read chunk ``index`` into a slot's buffer and send it; False once cancelled."""
        source = self._source
        copy: bytes | None = None
        async with self._slots.lend(size) as buffer:
            try:
                # Cached chunks straight from the event loop; the rest in a thread.
                length = self._inline(
                    functools.partial(source.read_chunk_into, cid, index, buffer, wait=False), cid
                )
            except WouldBlockError:
                read = functools.partial(source.read_chunk_into, cid, index, buffer)
                length = await self._call(read, cid)
            payload = memoryview(buffer)[:length]
            if self._limiter is not None:
                await self._limiter.acquire(len(payload) + DATA_FRAME_OVERHEAD)
            frame = self._session.data(req_id, index, payload)
            if isinstance(frame, ErrorReply):  # cancelled while we read or waited
                await self._send_frame(encode(frame))
                return False
            if self._behind is not None:
                await self._send_data(req_id, index, payload)
                return True
            copy = bytes(payload)
        await self._send_data(req_id, index, copy)
        return True

    async def _refuse(self, request: ClientRequest, exc: TransferError) -> None:
        frame = self._session.fail(request.req_id, exc)
        log.debug("transfer to %s: request %d ends with %s", self._peer, request.req_id, frame)
        await self._send_frame(encode(frame))

    async def _shape(self, cid: ContentId) -> _Shape:
        shape = self._shapes.get(cid)
        if shape is None:
            source = self._source
            shape = await self._call(lambda: _read_shape(source, cid), cid)
            self._shapes.put(cid, shape)
        return shape

    async def _call(self, fn: Callable[[], _T], cid: ContentId) -> _T:
        """Run a source call; its failures other than TransferError become ``internal``
        (the details go to our log, not to the peer)."""
        try:
            return await self._run_blocking(fn)
        except TransferError:
            raise
        except Exception as exc:
            raise self._internal(cid) from exc

    def _inline(self, fn: Callable[[], _T], cid: ContentId) -> _T:
        """``_call`` on the event loop, for a call that raises WouldBlockError rather
        than wait."""
        try:
            return fn()
        except (TransferError, WouldBlockError):
            raise
        except Exception as exc:
            raise self._internal(cid) from exc

    def _internal(self, cid: ContentId) -> PeerInternalError:
        log.exception("transfer to %s: reading %s failed", self._peer, cid)
        return PeerInternalError("the uploader failed to read this content")


def _check_range(cid: ContentId, shape: _Shape, first: int, count: int) -> None:
    if first + count > shape.total_chunks:
        raise BadRequestError(
            f"chunks {first} to {first + count - 1} are beyond the end of {cid}, "
            f"which has {shape.total_chunks}"
        )
