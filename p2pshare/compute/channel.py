"""One compute-protocol stream: job messages in length-prefixed frames, both ways.

The thin async shell over :mod:`p2pshare.proto.job`; the worker service and the
requester each hold one per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from p2pshare.errors import RemoteProtocolError
from p2pshare.proto.framing import FrameDecoder, encode_frame
from p2pshare.proto.job import MAX_MESSAGE_SIZE, decode_job_message, encode_job_message

if TYPE_CHECKING:
    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.job import JobMessage

_READ_SIZE: Final = 64 * 1024


class JobChannel:
    """Send and receive whole job messages on a byte stream."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(MAX_MESSAGE_SIZE)

    async def send(self, message: JobMessage) -> None:
        await self.stream.send_all(encode_frame(encode_job_message(message), MAX_MESSAGE_SIZE))

    async def receive(self) -> JobMessage | None:
        """The next message; None when the peer closed the stream between messages.

        RemoteProtocolError for a malformed message or a stream cut inside one.
        """
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return decode_job_message(frame)
            data = await self.stream.receive_some(_READ_SIZE)
            if not data:
                if self._decoder.buffered:
                    raise RemoteProtocolError("the stream ended inside a job message")
                return None
            self._decoder.feed(bytes(data))

    async def aclose(self) -> None:
        await self.stream.aclose()
