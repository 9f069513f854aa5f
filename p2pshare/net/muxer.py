"""Yamux whose frames go out whole, whatever is cancelled around them.

py-libp2p 0.8.1's Yamux encrypts a frame (advancing the Noise nonce) and then hands
it to the socket, with checkpoints in between and nothing shielded.  A task cancelled
there (a lookup that found enough and drops its other queries, a query's deadline,
a stream opened under a timeout) loses that frame after its nonce was spent: the
peer's next decryption fails and it drops the whole connection, and every other
stream on it with it.  In a crowd of 100 downloaders this was the seeder's DHT
requests failing with StreamEOF, StreamReset and "connection reset" (see
docs/discovery.md, "Departures from py-libp2p").

:class:`AtomicFrameYamux` writes each frame shielded, so a cancellation takes effect
once the frame is out; a socket that accepts nothing for FRAME_STALL_LIMIT seconds
ends the connection, since part of a frame may already be on the wire; the error is
the one a write to a closed socket raises, which py-libp2p's callers handle.

py-libp2p 0.8.1 also credits the sender after every read that leaves its window
short at all: each small message read (a DHT request, a chunk list, a multistream
line) costs one more encrypted WINDOW_UPDATE frame and a send, 6-8% of the CPU of
a daemon in a crowd of 100 in cProfile (docs/benchmarks.md).  :class:`BatchedWindowStream`
credits as go-yamux does, once half the receive window has been read: a sender
blocked on its window always has that much read on this side (the stream's buffer
is empty only once what was sent has been read), so no stream waits on a credit.

py-libp2p 0.8.1 also writes a stream's SYN, and the ACK that accepts it, each as a
frame of its own: two of the nine encrypted messages of a DHT query (docs/benchmarks.md,
bench/streams.py).  :class:`AtomicFrameYamux` holds a bare SYN or ACK back and writes it
in the same encrypted message as the next frame on the connection, which is the
opener's first data (the multistream header) or the listener's answer to it.  The
frames themselves are unchanged, so any yamux peer reads them as before; a held frame
only waits for the next frame, never reorders anything.

py-libp2p builds every yamux connection with the Yamux class named in its
muxer_multistream module, whatever class the host's muxer options give, and every
stream with the YamuxStream class named in its yamux module, so
:func:`use_atomic_frames` replaces those names.
"""

from __future__ import annotations

import struct
from typing import Any

import trio
from libp2p.network.connection.exceptions import RawConnError
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.yamux import yamux
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_SYN,
    HEADER_SIZE,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

# Seconds one frame may take to reach the socket; yamux's own ping gives up sooner.
FRAME_STALL_LIMIT = 30.0


def is_bare_open(frame: bytes) -> bool:
    """Whether ``frame`` is only a stream's SYN or ACK: a WINDOW_UPDATE of 0 with no
    other flag, the frame py-libp2p writes to open or accept a stream."""
    if len(frame) != HEADER_SIZE:
        return False
    version, kind, flags, stream_id, delta = struct.unpack(YAMUX_HEADER_FORMAT, frame)
    return (
        version == 0
        and kind == TYPE_WINDOW_UPDATE
        and flags in (FLAG_SYN, FLAG_ACK)
        and stream_id != 0
        and delta == 0
    )


class AtomicFrameYamux(Yamux):
    """py-libp2p's Yamux with each frame written shielded and bounded in time, and a
    bare SYN or ACK written with the frame after it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[bytes] = []

    async def _write_frame(self, data: bytes) -> None:
        if is_bare_open(data):
            await trio.lowlevel.checkpoint_if_cancelled()
            self._held.append(data)
            return
        if self._held:
            data = b"".join((*self._held, data))
            self._held.clear()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_STALL_LIMIT) as stalled:
                await super()._write_frame(data)
            if stalled.cancelled_caught:
                await self.secured_conn.close()
                raise RawConnError(
                    f"a frame to {self.peer_id} stalled for {FRAME_STALL_LIMIT:.0f} s"
                )
        await trio.lowlevel.checkpoint_if_cancelled()


class BatchedWindowStream(YamuxStream):
    """py-libp2p's YamuxStream, crediting the sender only once half its window is read."""

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        read_not_credited = self.target_recv_window - (self.recv_window + buffered)
        if read_not_credited < self._grow_threshold():
            # py-libp2p's full-grow and flush branches settle this count when they run.
            self._pending_recv_release += bytes_read
            return
        await super()._auto_tune_and_send_window_update(bytes_read=bytes_read)


def use_atomic_frames() -> None:
    """Make every yamux connection py-libp2p sets up from now on an AtomicFrameYamux,
    and each of its streams a BatchedWindowStream."""
    muxer_multistream.Yamux = AtomicFrameYamux  # type: ignore[attr-defined]
    yamux.YamuxStream = BatchedWindowStream  # type: ignore[misc]
