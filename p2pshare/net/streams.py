"""libp2p streams behind a small trio-like interface, and handlers that cannot kill the host.

py-libp2p 0.8.1 awaits stream handlers inside the host's own task: an exception
escaping a handler ends ``host.run`` and with it the whole node (basic_host.py
around line 1554).  Every handler we register therefore goes through
:class:`HandlerGuard`, which bounds its time, caps concurrent streams per peer and
turns any failure into a reset of that one stream and a log line.

:class:`LibP2PStream` writes, closes and resets shielded and bounded in time: a
cancellation takes effect between pieces of a write, and a close or reset goes out
even from a cancelled task, so the peer's handler for the stream ends (a DHT request
cancelled part way, p2pshare.net.dht.kad_stream).  That a cancelled write no longer
kills the whole connection is p2pshare.net.muxer's doing, for every stream.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamError

from p2pshare.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from libp2p.abc import IHost, INetStream

log = logging.getLogger(__name__)

# Bytes written per shielded step: one yamux frame's payload (py-libp2p's MAX_MESSAGE_SIZE).
_SEND_PIECE = 64 * 1024
# Seconds one shielded write, close or reset may take before the stream counts as broken.
SEND_STALL_LIMIT = 30.0


class ByteStream(Protocol):
    """What protocol code needs of a stream; trio's streams and LibP2PStream both fit."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SendsBehind(ByteStream, Protocol):
    """A stream that can take a shared buffer and give it back before the peer has read
    it (the data channel, p2pshare.net.encrypted_stream): the uploader lends it a chunk
    only once the connection could send at once, so slow peers hold no shared buffer."""

    async def wait_send_all_might_not_block(self) -> None: ...

    async def send_behind(self, data: bytes | bytearray | memoryview) -> None: ...

    async def flush(self) -> None: ...


class StreamBrokenError(RemoteError):
    """The peer reset the stream or the connection under it failed."""


class LibP2PStream:
    """A libp2p stream as a :class:`ByteStream`; ``b""`` means the peer closed its side."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self.peer_id = str(stream.muxed_conn.peer_id)

    @property
    def raw(self) -> INetStream:
        """The libp2p stream, for protocol code of libp2p's own (the DHT)."""
        return self._stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._stream.read(max_bytes)
        except StreamEOF:
            return b""
        except StreamError as exc:
            raise StreamBrokenError(f"stream from {self.peer_id} broke: {exc!r}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; a cancellation takes effect between pieces, never inside one,
        so what the peer receives of a cancelled write ends at a piece's end.

        This shield came first against the fault p2pshare.net.muxer now mends for every
        stream: py-libp2p encrypted a frame, advancing the Noise nonce, before handing it
        to the socket, and a write cancelled in between killed the whole connection.
        """
        view = memoryview(data)
        for start in range(0, len(view), _SEND_PIECE):
            await self._shielded(self._stream.write, bytes(view[start : start + _SEND_PIECE]))
        await trio.lowlevel.checkpoint_if_cancelled()

    async def aclose(self) -> None:
        try:
            await self._shielded(self._stream.close)
        except StreamBrokenError:
            await self.reset()

    async def reset(self) -> None:
        try:
            await self._shielded(self._stream.reset)
        except StreamBrokenError:
            log.debug("reset of a stream from %s failed; it is gone already", self.peer_id)

    async def _shielded(self, operation: Callable[..., Awaitable[None]], *args: bytes) -> None:
        # yamux gives up on a zero send window after 5 s; a socket that accepts nothing
        # for SEND_STALL_LIMIT means the connection is dead anyway.
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(SEND_STALL_LIMIT):
                    await operation(*args)
            except StreamError as exc:
                raise StreamBrokenError(f"stream to {self.peer_id} broke: {exc!r}") from exc
            except trio.TooSlowError:
                raise StreamBrokenError(f"stream to {self.peer_id} stalled") from None


@dataclass(frozen=True)
class HandlerLimits:
    """Bounds every inbound stream handler runs within."""

    streams_per_peer: int = 32
    handler_timeout: float = 300.0


class HandlerGuard:
    """Registers stream handlers on a host so that no handler can take the host down."""

    def __init__(self, host: IHost, limits: HandlerLimits) -> None:
        self._host = host
        self._limits = limits
        self._active: Counter[str] = Counter()
        self._active_of: Counter[tuple[str, str]] = Counter()

    def register(
        self,
        protocol: str,
        handler: Callable[[LibP2PStream], Awaitable[None]],
        *,
        bounded: bool = True,
        per_peer: int | None = None,
    ) -> None:
        """Guard ``handler``; ``bounded=False`` drops the time bound, for streams that
        legitimately last as long as a transfer does.  ``per_peer`` caps one peer's
        streams of this protocol below the cap on all of its streams."""
        limit = self._limits.handler_timeout if bounded else math.inf
        cap = self._limits.streams_per_peer if per_peer is None else per_peer
        guarded = self._guarded(protocol, handler, limit, cap, close_after=True)
        self._host.set_stream_handler(TProtocol(protocol), guarded)

    def adopt(self, protocol: str, *, bounded: bool = False) -> None:
        """Put the handler py-libp2p registered itself for ``protocol`` (circuit relay,
        DCUtR, AutoNAT) behind the per-peer cap and the exception guard.

        No close when it returns, and no time bound unless ``bounded``: a relay's hop
        stream carries the relayed connection long after its handler has returned.
        """
        raw_handler = self._host.get_mux().handlers.get(TProtocol(protocol))
        if raw_handler is None:
            raise LookupError(f"no handler registered for {protocol}")

        async def handler(stream: LibP2PStream) -> None:
            await raw_handler(stream.raw)

        limit = self._limits.handler_timeout if bounded else math.inf
        cap = self._limits.streams_per_peer
        guarded = self._guarded(protocol, handler, limit, cap, close_after=False)
        self._host.set_stream_handler(TProtocol(protocol), guarded)

    def _guarded(
        self,
        protocol: str,
        handler: Callable[[LibP2PStream], Awaitable[None]],
        limit: float,
        cap: int,
        *,
        close_after: bool,
    ) -> Callable[[INetStream], Awaitable[None]]:
        async def guarded(raw: INetStream) -> None:
            stream = LibP2PStream(raw)
            peer = stream.peer_id
            key = (protocol, peer)
            if self._active[peer] >= self._limits.streams_per_peer or self._active_of[key] >= cap:
                log.info("refusing a %s stream: %s has too many open", protocol, peer)
                await stream.reset()
                return
            self._active[peer] += 1
            self._active_of[key] += 1
            try:
                with trio.fail_after(limit):
                    await handler(stream)
            except trio.TooSlowError:
                log.info("%s handler for %s timed out; stream reset", protocol, peer)
                await stream.reset()
            except RemoteError as exc:
                log.info("%s from %s: %s; stream reset", protocol, peer, exc)
                await stream.reset()
            except Exception:
                log.exception("%s handler failed for %s; stream reset", protocol, peer)
                await stream.reset()
            else:
                if close_after:
                    await stream.aclose()
            finally:
                self._active[peer] -= 1
                if not self._active[peer]:
                    del self._active[peer]
                self._active_of[key] -= 1
                if not self._active_of[key]:
                    del self._active_of[key]

        return guarded

    def active_streams(self, peer: str) -> int:
        return self._active[peer]
