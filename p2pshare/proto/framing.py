"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

The decoder checks the declared length against its limit before buffering the
body, so a peer announcing a 4 GiB frame costs us four bytes of memory, not four
gigabytes.
"""

from __future__ import annotations

from p2pshare.errors import LocalProtocolError, RemoteProtocolError

HEADER_SIZE = 4


class FrameTooLargeError(RemoteProtocolError):
    """A frame header announced more bytes than the limit allows."""


def encode_frame(payload: bytes, max_size: int) -> bytes:
    """Prefix ``payload`` with its length; refuse payloads over ``max_size``."""
    if len(payload) > max_size:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds the {max_size} limit")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Turn a byte stream, fed in pieces of any size, into whole frames."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> None:
        """Append bytes received from the stream."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame, or None until more bytes are fed.

        Raises FrameTooLargeError on an oversized header; the stream has then lost
        its framing and the decoder refuses to go on.
        """
        if self._failed:
            raise FrameTooLargeError("the stream has already broken the frame size limit")
        if len(self._buffer) < HEADER_SIZE:
            return None
        size = int.from_bytes(self._buffer[:HEADER_SIZE], "big")
        if size > self._max_size:
            self._failed = True
            raise FrameTooLargeError(
                f"frame of {size} bytes exceeds the {self._max_size} byte limit"
            )
        end = HEADER_SIZE + size
        if len(self._buffer) < end:
            return None
        frame = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)
