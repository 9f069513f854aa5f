"""One compute-protocol stream: a sans-IO job session driven over a byte stream.

The thin async shell over :mod:`p2pshare.proto.jobsession`: it only moves bytes.
The session decides what may be sent and checks what arrives; the worker service
and the requester each hold one channel per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

from p2pshare.proto.jobsession import WorkerEvent, WorkerSession

if TYPE_CHECKING:
    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.job import OfferReply
    from p2pshare.proto.jobsession import JobAnswer

_READ_SIZE: Final = 64 * 1024

E_co = TypeVar("E_co", covariant=True)
E = TypeVar("E")


class Session(Protocol[E_co]):
    """What a channel needs of a session: bytes in, events out."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> E_co | None: ...


class JobChannel(Generic[E]):
    """Feed a session the bytes of a stream and write the bytes it returns."""

    def __init__(self, stream: ByteStream, session: Session[E]) -> None:
        self.stream = stream
        self.session = session

    async def send(self, frame: bytes) -> None:
        await self.stream.send_all(frame)

    async def next_event(self) -> E:
        """The session's next event, reading the stream as long as it needs more bytes.

        The session's errors (RemoteProtocolError for anything out of order or
        malformed, a stream cut inside a message included) pass through.
        """
        while (event := self.session.next_event()) is None:
            data = await self.stream.receive_some(_READ_SIZE)
            self.session.receive_data(bytes(data))
        return event

    async def aclose(self) -> None:
        await self.stream.aclose()


class WorkerChannel(JobChannel[WorkerEvent]):
    """The worker's end of a stream: a :class:`WorkerSession` over it."""

    def __init__(self, stream: ByteStream) -> None:
        self.worker = WorkerSession()
        super().__init__(stream, self.worker)

    async def answer(self, message: OfferReply | JobAnswer) -> None:
        """Send ``message``; LocalProtocolError if it is not the worker's turn."""
        await self.send(self.worker.send(message))
