"""Sans-IO sessions of the compute protocol: the legal order of job messages on one stream.

As :mod:`p2pshare.proto.transfer`'s ClientSession and ServerSession (and h11): the
shell feeds the bytes it receives to ``receive_data`` (``b""`` when the peer closed
the stream), takes checked messages from ``next_event`` and writes the bytes the
session returns for what it sends.  A session refuses what its own side may not send
(LocalProtocolError) and what the peer may not send (RemoteProtocolError, or
IntegrityError for a receipt that does not verify), and matches every message to the
stream's job.  One stream carries one exchange::

    requester                        worker
    OFFER_REQUEST  ->
                   <-  OFFER | REJECT not_offering (all-zero job ID)
or
    SUBMIT         ->
                   <-  ACCEPT | REJECT
                   <-  PROGRESS*                    (after ACCEPT)
                   <-  RESULT | REJECT              (after ACCEPT; ends the job)
    CANCEL         ->                               (at any time before the end)

After the end either side may close the stream; a worker still running a job takes
the requester's close, or anything else it sends, as CANCEL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias

from p2pshare.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.framing import FrameDecoder, encode_frame
from p2pshare.proto.job import (
    MAX_MESSAGE_SIZE,
    Accept,
    Cancel,
    JobMessage,
    OfferReply,
    OfferRequest,
    Progress,
    Reject,
    Result,
    Submit,
    decode_job_message,
    encode_job_message,
)
from p2pshare.proto.receipt import verify_receipt

if TYPE_CHECKING:
    from p2pshare.proto.job import JobState as ProgressState

# The job ID a worker's answer to OFFER_REQUEST names: there is no job.
NO_JOB: Final = bytes(32)


class SessionState(StrEnum):
    """Where the exchange on one stream is.

    The four progress states mirror the last PROGRESS (:class:`p2pshare.proto.job.JobState`).
    """

    IDLE = "idle"
    ASKED = "asked"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    QUEUED = "queued"
    FETCHING = "fetching"
    COMPILING = "compiling"
    RUNNING = "running"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"

    @classmethod
    def of_progress(cls, state: ProgressState) -> SessionState:
        return cls(state.value)

    @property
    def running(self) -> bool:
        """A job is accepted and has not ended."""
        return self in _RUNNING

    @property
    def ended(self) -> bool:
        return self in _ENDED


_RUNNING: Final = frozenset(
    {
        SessionState.ACCEPTED,
        SessionState.QUEUED,
        SessionState.FETCHING,
        SessionState.COMPILING,
        SessionState.RUNNING,
    }
)
_ANSWERED: Final = frozenset({SessionState.DONE, SessionState.REFUSED})
_ENDED: Final = _ANSWERED | {SessionState.FAILED}


@dataclass(frozen=True)
class Closed:
    """The peer closed the stream where the protocol allows it."""


RequesterEvent: TypeAlias = OfferReply | Accept | Reject | Progress | Result | Closed
WorkerEvent: TypeAlias = OfferRequest | Submit | Cancel | Closed
JobAnswer: TypeAlias = Accept | Reject | Progress | Result


def _frame(message: JobMessage) -> bytes:
    return encode_frame(encode_job_message(message), MAX_MESSAGE_SIZE)


class _Session:
    """Framing, end of stream and the sticky failure both sides share."""

    def __init__(self) -> None:
        self.state = SessionState.IDLE
        self._decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` once it has closed the stream."""
        if self._eof:
            raise LocalProtocolError("no data can follow the end of the stream")
        if data:
            self._decoder.feed(bytes(data))
        else:
            self._eof = True

    def next_message(self) -> JobMessage | Closed | None:
        """The next whole message, Closed at the end of the stream, None to wait for data."""
        if self.state is SessionState.FAILED:
            raise RemoteProtocolError("the peer already broke the job protocol on this stream")
        try:
            frame = self._decoder.next_frame()
            if frame is not None:
                return decode_job_message(frame)
            if not self._eof:
                return None
            if self._decoder.buffered:
                raise RemoteProtocolError("the stream ended inside a job message")
        except RemoteError:
            self.state = SessionState.FAILED
            raise
        return Closed()

    def fail(self, message: str) -> RemoteProtocolError:
        self.state = SessionState.FAILED
        return RemoteProtocolError(message)


class RequesterSession:
    """The requester's half of one stream: an offer request or one submitted job.

    ``worker`` is the public key of the peer asked: a RESULT's receipt must be signed
    by it and name it, and the job submitted.  ``next_event`` returns the worker's
    messages in their legal order, a REJECT included (``Reject.exception()`` is the
    typed error), and Closed once the stream ended after the exchange.
    """

    def __init__(self, worker: bytes) -> None:
        self._session = _Session()
        self._worker = worker
        self._job: bytes | None = None
        self._cancelled = False

    @property
    def state(self) -> SessionState:
        return self._session.state

    @property
    def job_id(self) -> bytes | None:
        return self._job

    def offer_request(self) -> bytes:
        """The OFFER_REQUEST to send; the first and only message of the stream."""
        self._start(SessionState.ASKED)
        return _frame(OfferRequest())

    def submit(self, submit: Submit) -> bytes:
        """The SUBMIT to send; the first and only message of the stream but CANCEL."""
        frame = _frame(submit)
        self._start(SessionState.SUBMITTED)
        self._job = submit.job_id
        return frame

    def cancel(self) -> bytes | None:
        """The CANCEL to send, or None when no job is in flight or it was cancelled."""
        # After a protocol error the worker may still be running the job: cancel it.
        if self._job is None or self.state in _ANSWERED or self._cancelled:
            return None
        self._cancelled = True
        return _frame(Cancel(self._job))

    def receive_data(self, data: bytes) -> None:
        self._session.receive_data(data)

    def next_event(self) -> RequesterEvent | None:
        """The worker's next message, Closed at the end, or None to wait for more data."""
        message = self._session.next_message()
        if message is None:
            return None
        state = self.state
        if isinstance(message, Closed):
            if not state.ended:
                raise self._session.fail("the worker closed the stream before answering")
            return message
        if state is SessionState.ASKED:
            return self._offer_answer(message)
        if state is SessionState.SUBMITTED or state.running:
            return self._job_answer(message)
        raise self._session.fail(f"the worker sent {type(message).__name__} after the end")

    def _offer_answer(self, message: JobMessage) -> OfferReply | Reject:
        if isinstance(message, OfferReply):
            self._session.state = SessionState.DONE
            return message
        if isinstance(message, Reject) and message.job_id == NO_JOB:
            self._session.state = SessionState.REFUSED
            return message
        raise self._session.fail(f"the worker answered an offer request with {message!r}")

    def _job_answer(self, message: JobMessage) -> JobAnswer:
        if not isinstance(message, Accept | Reject | Progress | Result):
            raise self._session.fail(f"a worker does not send {type(message).__name__}")
        if message.job_id != self._job:
            raise self._session.fail("the worker answered about another job")
        submitted = self.state is SessionState.SUBMITTED
        if isinstance(message, Reject):
            self._session.state = SessionState.REFUSED
            return message
        if isinstance(message, Accept):
            if not submitted:
                raise self._session.fail("the worker sent ACCEPT twice")
            self._session.state = SessionState.ACCEPTED
            return message
        if submitted:
            raise self._session.fail(f"the worker sent {type(message).__name__} before ACCEPT")
        if isinstance(message, Progress):
            self._session.state = SessionState.of_progress(message.state)
            return message
        try:
            signed = verify_receipt(message.receipt.data, worker=self._worker, job=self._job)
        except RemoteError:
            self._session.state = SessionState.FAILED
            raise
        self._session.state = SessionState.DONE
        return Result(signed, message.stdout)

    def _start(self, state: SessionState) -> None:
        if self.state is not SessionState.IDLE:
            raise LocalProtocolError("a compute stream carries one offer request or one job")
        self._session.state = state


class WorkerSession:
    """The worker's half of one stream.

    ``next_event`` gives the requester's OFFER_REQUEST or SUBMIT, then any CANCEL, and
    Closed at the end of the stream; ``send`` turns each answer into bytes and refuses
    one out of order (LocalProtocolError).
    """

    def __init__(self) -> None:
        self._session = _Session()
        self._job: bytes | None = None
        self.cancelled = False

    @property
    def state(self) -> SessionState:
        return self._session.state

    def receive_data(self, data: bytes) -> None:
        self._session.receive_data(data)

    def next_event(self) -> WorkerEvent | None:
        """The requester's next message, Closed at the end, or None to wait for data."""
        message = self._session.next_message()
        if message is None or isinstance(message, Closed):
            return message
        if self.state is SessionState.IDLE:
            if isinstance(message, OfferRequest):
                self._session.state = SessionState.ASKED
                return message
            if isinstance(message, Submit):
                self._session.state = SessionState.SUBMITTED
                self._job = message.job_id
                return message
            raise self._session.fail(f"a job stream cannot begin with {type(message).__name__}")
        if not isinstance(message, Cancel) or self._job is None:
            raise self._session.fail(f"the requester sent {type(message).__name__} out of turn")
        if message.job_id != self._job or self.cancelled:
            raise self._session.fail("the requester cancelled another job, or twice")
        self.cancelled = True
        return message

    def send(self, message: OfferReply | JobAnswer) -> bytes:
        """The bytes of ``message``; LocalProtocolError if it is not this side's turn."""
        state = self.state
        if state is SessionState.ASKED:
            return self._answer_offer(message)
        if state is SessionState.SUBMITTED:
            if isinstance(message, Accept | Reject):
                return self._job_frame(message, _ACCEPTED_OR_REFUSED[type(message)])
        elif state.running:
            if isinstance(message, Progress):
                return self._job_frame(message, SessionState.of_progress(message.state))
            if isinstance(message, Result | Reject):
                return self._job_frame(message, _ACCEPTED_OR_REFUSED[type(message)])
        raise LocalProtocolError(f"a worker cannot send {type(message).__name__} now ({state})")

    def _answer_offer(self, message: JobMessage) -> bytes:
        if isinstance(message, OfferReply):
            return self._frame(message, SessionState.DONE)
        if isinstance(message, Reject) and message.job_id == NO_JOB:
            return self._frame(message, SessionState.REFUSED)
        raise LocalProtocolError(f"{message!r} does not answer an offer request")

    def _job_frame(
        self, message: Accept | Reject | Progress | Result, state: SessionState
    ) -> bytes:
        if message.job_id != self._job:
            raise LocalProtocolError("the message names another job than the one submitted")
        return self._frame(message, state)

    def _frame(self, message: JobMessage, state: SessionState) -> bytes:
        frame = _frame(message)
        self._session.state = state
        return frame


_ACCEPTED_OR_REFUSED: Final[dict[type, SessionState]] = {
    Accept: SessionState.ACCEPTED,
    Reject: SessionState.REFUSED,
    Result: SessionState.DONE,
}
