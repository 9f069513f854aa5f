"""The encrypted stream: one TCP connection of AEAD frames, as a ByteStream.

The data channel's transport (p2pshare.net.datachannel sets it up): frames are sealed
and opened by the sans-IO p2pshare.proto.dataframes, which also owns the receive
buffer and its reassembly; this module moves them over a trio socket, times out an
idle peer and places the AEAD inline or in a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from p2pshare.net.streams import StreamBrokenError
from p2pshare.proto.dataframes import MAX_PLAINTEXT, MAX_WIRE_FRAME, FrameReader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from p2pshare.proto.datachannel import Channel

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Where the AEAD of a frame runs.  Frames below THREAD_THRESHOLD always run inline:
# the thread hand-off costs more than their AEAD.  Larger frames run inline while
# this stream has measured its AEAD faster than OFFLOAD_ABOVE seconds per MiB, and in
# a worker thread otherwise.  With AES-NI (6-8 GiB/s) or a fast ChaCha20 (2 GiB/s)
# inline measured 25-50 % faster than the thread (the hand-off and a cache-cold
# buffer on the other core cost more than the 0.15-0.5 ms of AEAD), and it blocks the
# event loop for well under the 2 ms bound; on a core that needs longer (software
# AES, small ARM cores) the thread keeps the event loop responsive and uses a second
# core.  docs/data-channel.md has the figures.
THREAD_THRESHOLD: Final = 64 * 1024
OFFLOAD_ABOVE: Final = 0.002
_MIB: Final = 1 << 20
# Linux caps SO_RCVLOWAT at half the receive buffer; a quarter of a frame less keeps
# the wake-up well inside what a small buffer can hold.
_MAX_RCVLOWAT: Final = 768 * 1024
# How long closing tries to send our FIN (the channel's, or the setup stream's) before
# it just closes.  A FIN is a few bytes, which a socket takes at once unless the peer
# stopped reading; then waiting longer would not help.
FIN_GRACE: Final = 2.0

# Frame buffers kept between sends, for all streams of the process together: a stream
# borrows one only while it seals and writes, so a hundred idle or slow connections
# hold none (the uploader's slots, p2pshare.transfer.upload_slots, bound how many
# large sends run at once).
KEPT_FRAME_BUFFERS: Final = 16

# Seconds without a byte received or sent before a connection counts as dead.  Well
# above the downloader's 60 s request timeout, so a slow but live transfer is never cut
# here, and short enough that a vanished peer frees its slot within minutes.
IDLE_TIMEOUT: Final = 120.0


class _FrameBuffers:
    """Frame-sized buffers lent for one send and taken back (at most KEPT_FRAME_BUFFERS
    kept), so a buffer already faulted in serves the next send of any stream."""

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    @contextlib.contextmanager
    def lend(self) -> Iterator[memoryview]:
        buffer = self._free.pop() if self._free else bytearray(MAX_WIRE_FRAME)
        try:
            with memoryview(buffer) as view:
                yield view
        finally:
            if len(self._free) < KEPT_FRAME_BUFFERS:
                self._free.append(buffer)


_FRAMES: Final = _FrameBuffers()


class DataChannelIdleError(StreamBrokenError):
    """Nothing was received or sent for the idle timeout: the peer is taken to be gone."""


def _timed(fn: Callable[[], _T]) -> tuple[_T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class _CryptoPlacement:
    """Runs one direction's AEAD inline or in a worker thread (see OFFLOAD_ABOVE)."""

    def __init__(self, in_thread: bool | None) -> None:
        self._forced = in_thread
        self._seconds_per_mib = 0.0

    @property
    def in_thread(self) -> bool:
        if self._forced is not None:
            return self._forced
        return self._seconds_per_mib > OFFLOAD_ABOVE

    async def run(self, fn: Callable[[], _T], size: int, *, checkpoint: bool) -> _T:
        """``fn()`` for a frame of ``size`` bytes; ``checkpoint`` if the caller has not yet."""
        if size < THREAD_THRESHOLD:
            if checkpoint:
                await trio.lowlevel.checkpoint()
            return fn()
        if self.in_thread:
            # Not abandoned on cancel: the thread works on our buffers until it ends.
            result, elapsed = await trio.to_thread.run_sync(_timed, fn)
        else:
            if checkpoint:
                await trio.lowlevel.checkpoint()
            result, elapsed = _timed(fn)
        sample = elapsed * _MIB / size
        self._seconds_per_mib = 0.75 * self._seconds_per_mib + 0.25 * sample
        return result


class EncryptedStream:
    """A :class:`~p2pshare.net.streams.ByteStream` over one TCP connection of AEAD frames.

    Like trio's streams, it allows one sending and one receiving task at a time
    (``trio.BusyResourceError`` otherwise), and a cancelled ``send_all`` leaves the
    sending side broken.  ``receive_some`` returns ``b""`` only after the peer's
    authenticated FIN; a connection that ends without one raises
    :class:`~p2pshare.proto.datachannel.TruncatedStreamError`.  ``aclose`` sends our
    FIN first (best effort), ``reset`` closes without it, so the peer sees a
    truncation and knows the stream did not end cleanly.

    ``crypto_in_thread`` forces where large frames are sealed and opened (tests); the
    default, None, decides by measurement (see OFFLOAD_ABOVE).

    ``idle_timeout``: a receive or send that waits on the peer raises
    :class:`DataChannelIdleError` once nothing was received from the socket and
    nothing accepted by it for that many seconds, in either direction, so a send that
    keeps the connection busy also keeps a waiting receive alive.  None: no limit.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        channel: Channel,
        *,
        peer_id: str,
        crypto_in_thread: bool | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
    ) -> None:
        self.peer_id = peer_id
        self._idle_timeout = math.inf if idle_timeout is None else idle_timeout
        self._last_activity = trio.current_time()
        self._seal_placement = _CryptoPlacement(crypto_in_thread)
        self._open_placement = _CryptoPlacement(crypto_in_thread)
        self._stream = stream
        if hasattr(trio.socket, "TCP_NOTSENT_LOWAT"):
            # trio sets 16 KiB, which suits interactive streams; a bulk sender would
            # wake and call send() for every 16 KiB the peer drains.  With a frame's
            # worth, a frame goes out in one or two calls.
            with contextlib.suppress(OSError):
                stream.setsockopt(
                    trio.socket.IPPROTO_TCP, trio.socket.TCP_NOTSENT_LOWAT, MAX_WIRE_FRAME
                )
        self._sealer = channel.sealer
        self._reader = FrameReader(channel.opener)
        self._rcvlowat = 1
        self._leftover: bytes = b""
        self._leftover_pos = 0
        # The unsent end of the last frame: send_all returns once the kernel has taken
        # what it can at once, so the frame buffer goes back to the pool at once.
        self._pending: bytes = b""
        self._receiving = False
        self._sending = False
        self._send_broken = False
        self._eof = False
        self._closed = False

    # -- receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next plaintext bytes, at most ``max_bytes``; ``b""`` after the peer's FIN."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._closed:
            raise trio.ClosedResourceError("the data channel is closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this data channel")
        self._receiving = True
        try:
            if self._leftover_pos < len(self._leftover):
                await trio.lowlevel.checkpoint()
                return self._take_leftover(max_bytes)
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            plaintext = await self._next_plaintext()
            if not plaintext:
                self._eof = True
                return b""
            if max_bytes is None or len(plaintext) <= max_bytes:
                return plaintext
            self._leftover, self._leftover_pos = plaintext, 0
            return self._take_leftover(max_bytes)
        finally:
            self._receiving = False

    def _take_leftover(self, max_bytes: int | None) -> bytes:
        start = self._leftover_pos
        end = (
            len(self._leftover)
            if max_bytes is None
            else min(len(self._leftover), start + max_bytes)
        )
        self._leftover_pos = end
        piece = self._leftover[start:end]
        if end == len(self._leftover):
            self._leftover, self._leftover_pos = b"", 0
        return piece

    async def _next_plaintext(self) -> bytes:
        """Receive until the reader holds one whole frame, then decrypt it."""
        did_io = False
        while (ciphertext := self._reader.next_ciphertext()) is None:
            self._wake_at(self._reader.wanted())
            did_io = True
            await self._fill()
        decrypt = functools.partial(self._reader.decrypt, ciphertext)
        return await self._open_placement.run(decrypt, len(ciphertext), checkpoint=not did_io)

    def _wake_at(self, wanted: int) -> None:
        """Let the kernel report the socket readable only once ``wanted`` bytes are in.

        The peer has announced them in a frame header (or they are a header), so they
        come unless it fails, and a FIN or reset still wakes us.  Without this a 1 MiB
        frame arriving over loopback woke the event loop three or four times.
        """
        lowat = min(wanted, _MAX_RCVLOWAT)
        if lowat != self._rcvlowat:
            self._rcvlowat = lowat
            with contextlib.suppress(OSError):
                self._stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVLOWAT, lowat)

    async def _fill(self) -> None:
        free = self._reader.free_space()
        while True:
            # A trio socket call cancelled while it waits has consumed nothing.
            with trio.move_on_at(self._last_activity + self._idle_timeout):
                try:
                    received = await self._stream.socket.recv_into(free, len(free))
                except OSError as exc:
                    raise StreamBrokenError(
                        f"data channel from {self.peer_id} broke: {exc!r}"
                    ) from exc
                break
            self._check_idle()
        self._last_activity = trio.current_time()
        if not received:
            self._reader.end_of_stream(self.peer_id)
        self._reader.advance(received)

    # -- sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data`` as frames of at most 1 MiB."""
        await self._send(data, behind=False)

    async def send_behind(self, data: bytes | bytearray | memoryview) -> None:
        """Like ``send_all``, but return once every frame is sealed and the kernel took
        all of them but the unsent end of the last one, which the stream keeps (a copy:
        the caller may reuse ``data`` at once) and sends before anything else.  The
        caller must then ``flush`` (or send again) before it waits for an answer."""
        await self._send(data, behind=True)

    async def flush(self) -> None:
        """Send what ``send_behind`` kept."""
        with self._sending_turn():
            await self._flush_pending()

    async def _send(self, data: bytes | bytearray | memoryview, *, behind: bool) -> None:
        with self._sending_turn():
            await self._flush_pending()
            # A send is a checkpoint even when the kernel takes everything at once.
            await trio.lowlevel.checkpoint()
            view = memoryview(data).cast("B")
            if not view.nbytes:
                return
            if view.nbytes < THREAD_THRESHOLD:
                # Requests and headers: a buffer of their size, not a pooled 1 MiB one.
                frame = memoryview(bytearray(MAX_WIRE_FRAME - MAX_PLAINTEXT + view.nbytes))
                await self._send_frame(frame[: self._sealer.seal_into(view, frame)], behind)
                return
            with _FRAMES.lend() as buffer:
                for offset in range(0, view.nbytes, MAX_PLAINTEXT):
                    piece = view[offset : offset + MAX_PLAINTEXT]
                    seal = functools.partial(self._sealer.seal_into, piece, buffer)
                    size = await self._seal_placement.run(seal, len(piece), checkpoint=False)
                    last = offset + MAX_PLAINTEXT >= view.nbytes
                    await self._send_frame(buffer[:size], behind and last)

    async def _send_frame(self, frame: memoryview, behind: bool) -> None:
        if behind:
            self._write_behind(frame)
        else:
            await self._send_raw(frame)

    @contextlib.contextmanager
    def _sending_turn(self) -> Iterator[None]:
        """The one task sending; any failure inside breaks the sending side for good."""
        self._start_sending()
        try:
            yield
        except BaseException:
            # A frame may be half out, or its nonce used: nothing after it would open.
            self._send_broken = True
            raise
        finally:
            self._sending = False

    def _start_sending(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the data channel is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this data channel")
        if self._send_broken:
            raise StreamBrokenError(f"the data channel to {self.peer_id} is broken")
        if self._sealer.finished:
            raise trio.ClosedResourceError("send_eof() was called on this data channel")
        self._sending = True

    def _write_behind(self, frame: memoryview) -> None:
        """Write what the socket takes now; keep a copy of the rest for later."""
        try:
            sent = os.write(self._stream.socket.fileno(), frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise StreamBrokenError(f"data channel to {self.peer_id} broke: {exc!r}") from exc
        if sent:
            self._last_activity = trio.current_time()
        if sent < len(frame):
            self._pending = bytes(frame[sent:])

    async def _flush_pending(self) -> None:
        if self._pending:
            await self._send_raw(self._pending)
            self._pending = b""

    async def wait_send_all_might_not_block(self) -> None:
        """Return once the connection could take a frame at once: what ``send_behind``
        kept is out of this process and the kernel's unsent bytes are below one frame
        (TCP_NOTSENT_LOWAT).  Waiting here even when the last frame went out whole
        keeps what a slow peer leaves behind small: without it, 100 downloaders left
        the seeder holding most of a frame each (244 against 188 MB, docs/benchmarks.md).
        Raises like ``send_all`` if the connection broke or the peer took nothing for
        the idle timeout."""
        with self._sending_turn():
            await self._flush_pending()
            while True:
                with trio.move_on_at(self._last_activity + self._idle_timeout):
                    await trio.lowlevel.wait_writable(self._stream.socket)
                    return
                self._check_idle()

    async def _send_raw(self, data: bytes | memoryview) -> None:
        # Socket sends rather than SocketStream.send_all: each partial send is
        # progress, so a slow reader is not mistaken for an idle one.
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                with trio.move_on_at(self._last_activity + self._idle_timeout):
                    try:
                        sent += await self._stream.socket.send(view[sent:])
                    except OSError as exc:
                        raise StreamBrokenError(
                            f"data channel to {self.peer_id} broke: {exc!r}"
                        ) from exc
                    self._last_activity = trio.current_time()
                    continue
                self._check_idle()

    def _check_idle(self) -> None:
        """After a wait timed out: fail unless the other direction moved meanwhile."""
        if trio.current_time() >= self._last_activity + self._idle_timeout:
            raise DataChannelIdleError(
                f"nothing moved on the data channel with {self.peer_id} for"
                f" {self._idle_timeout:g} s; the peer is taken to be gone"
            )

    async def send_eof(self) -> None:
        """Send our FIN: the peer reads ``b""`` after everything sent so far."""
        if self._closed:
            raise trio.ClosedResourceError("the data channel is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this data channel")
        if self._sealer.finished:
            await trio.lowlevel.checkpoint()
            return
        self._sending = True
        try:
            await self._flush_pending()
            await self._send_raw(self._sealer.seal_fin())
        except BaseException:
            self._send_broken = True
            raise
        finally:
            self._sending = False

    # -- closing

    async def aclose(self) -> None:
        """Send the FIN if the sending side is idle and intact, then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if not (self._sending or self._send_broken or self._sealer.finished):
                with trio.move_on_after(FIN_GRACE):
                    await self._flush_pending()
                    await self._send_raw(self._sealer.seal_fin())
        except (StreamBrokenError, trio.ClosedResourceError):
            log.debug("FIN to %s not sent; the connection is gone", self.peer_id)
        finally:
            self._closed = True
            await self._stream.aclose()

    async def reset(self) -> None:
        """Close without FIN: the peer sees a truncated stream, never a clean end."""
        self._closed = True
        await self._stream.aclose()
