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

py-libp2p builds every yamux connection with the Yamux class named in its
muxer_multistream module, whatever class the host's muxer options give, so
:func:`use_atomic_frames` replaces that name.
"""

from __future__ import annotations

import trio
from libp2p.network.connection.exceptions import RawConnError
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.yamux.yamux import Yamux

# Seconds one frame may take to reach the socket; yamux's own ping gives up sooner.
FRAME_STALL_LIMIT = 30.0


class AtomicFrameYamux(Yamux):
    """py-libp2p's Yamux with each frame written shielded and bounded in time."""

    async def _write_frame(self, data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_STALL_LIMIT) as stalled:
                await super()._write_frame(data)
            if stalled.cancelled_caught:
                await self.secured_conn.close()
                raise RawConnError(
                    f"a frame to {self.peer_id} stalled for {FRAME_STALL_LIMIT:.0f} s"
                )
        await trio.lowlevel.checkpoint_if_cancelled()


def use_atomic_frames() -> None:
    """Make every yamux connection py-libp2p sets up from now on an AtomicFrameYamux."""
    muxer_multistream.Yamux = AtomicFrameYamux  # type: ignore[attr-defined]
