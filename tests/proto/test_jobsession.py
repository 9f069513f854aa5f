"""The compute protocol's sessions: legal order, job matching, any split of the bytes."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.proto.cid import ContentId
from p2pshare.proto.framing import encode_frame
from p2pshare.proto.job import (
    MAX_MESSAGE_SIZE,
    Accept,
    Cancel,
    JobMessage,
    JobState,
    OfferReply,
    OfferRequest,
    Progress,
    Reject,
    RejectCode,
    Result,
    Submit,
    encode_job_message,
)
from p2pshare.proto.jobsession import (
    NO_JOB,
    Closed,
    JobAnswer,
    RequesterSession,
    SessionState,
    WorkerSession,
)
from p2pshare.proto.jobspec import build_job_spec
from p2pshare.proto.receipt import JobStatus, Receipt, output_digest, sign_receipt
from tests.proto.signed_kinds import WORKER

if TYPE_CHECKING:
    from collections.abc import Sequence

OTHER = NodeKey.from_seed(bytes(range(1, 33)))
SUBMIT = Submit(build_job_spec(ContentId.of(b"module"), args=["a"]), bytes(16))
JOB = SUBMIT.job_id


def _result(job: bytes = JOB, key: NodeKey = WORKER, stdout: bytes = b"hi") -> Result:
    receipt = Receipt(
        job_id=job,
        worker=key.public_key,
        status=JobStatus.OK,
        exit_code=0,
        fuel_used=7,
        output=None,
        digest=output_digest(stdout),
    )
    return Result(sign_receipt(receipt, key), stdout)


def _frames(*messages: JobMessage) -> bytes:
    return b"".join(encode_frame(encode_job_message(m), MAX_MESSAGE_SIZE) for m in messages)


def _split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _drain(session: RequesterSession | WorkerSession, pieces: Sequence[bytes]) -> list[object]:
    events: list[object] = []
    for piece in [*pieces, b""]:
        session.receive_data(piece)
        while (event := session.next_event()) is not None:
            events.append(event)
            if isinstance(event, Closed):
                return events
    return events


def _submitted() -> RequesterSession:
    session = RequesterSession(WORKER.public_key)
    session.submit(SUBMIT)
    return session


progress = st.builds(
    Progress,
    st.just(JOB),
    st.sampled_from(JobState),
    st.none() | st.integers(0, 10**9),
    st.none() | st.integers(0, 10**9),
)


@given(st.lists(progress, max_size=5), st.lists(st.integers(0, 10**6), max_size=12))
def test_a_whole_job_reads_the_same_under_any_split(
    progresses: list[Progress], cuts: list[int]
) -> None:
    worker = WorkerSession()
    assert _drain_open(worker, _frames(SUBMIT)) == [SUBMIT]
    answers: list[JobMessage] = [Accept(JOB), *progresses, _result()]
    sent = b"".join(
        [worker.send(Accept(JOB)), *(worker.send(p) for p in progresses), worker.send(_result())]
    )
    assert sent == _frames(*answers)
    assert worker.state is SessionState.DONE
    requester = _submitted()
    events = _drain(requester, _split(sent, cuts))
    assert events == [*answers, Closed()]
    assert requester.state is SessionState.DONE


@given(st.lists(st.integers(0, 10**6), max_size=8))
def test_an_offer_exchange_reads_the_same_under_any_split(cuts: list[int]) -> None:
    requester = RequesterSession(WORKER.public_key)
    worker = WorkerSession()
    assert _drain(worker, _split(requester.offer_request(), cuts)) == [OfferRequest(), Closed()]
    reply = worker.send(OfferReply(b"x" * 100))
    assert _drain(requester, _split(reply, cuts)) == [OfferReply(b"x" * 100), Closed()]
    assert requester.state is worker.state is SessionState.DONE


# Well-formed frames in any order, and any bytes between them.
_FRAMES = [
    _frames(m)
    for m in (
        SUBMIT,
        OfferRequest(),
        OfferReply(b"x"),
        Accept(JOB),
        Progress(JOB, JobState.RUNNING),
        _result(),
        Reject(JOB, RejectCode.BUSY, "busy"),
        Reject(NO_JOB, RejectCode.NOT_OFFERING, "off"),
        Cancel(JOB),
    )
]
streams = st.lists(st.sampled_from(_FRAMES) | st.binary(max_size=40), max_size=6).map(b"".join)


@given(streams, st.lists(st.integers(0, 400), max_size=6))
def test_garbage_gives_a_requester_only_a_remote_error(data: bytes, cuts: list[int]) -> None:
    requester = _submitted()
    try:
        _drain(requester, _split(data, cuts))
    except RemoteError:
        assert requester.state is SessionState.FAILED


@given(streams, st.lists(st.integers(0, 400), max_size=6))
def test_garbage_gives_a_worker_only_a_remote_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(RemoteError):
        _drain(WorkerSession(), _split(data, cuts))


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        ([Progress(JOB, JobState.RUNNING)], "before ACCEPT"),
        ([_result()], "before ACCEPT"),
        ([Accept(JOB), Accept(JOB)], "ACCEPT twice"),
        ([Accept(bytes(32))], "another job"),
        ([Accept(JOB), Progress(bytes(32), JobState.RUNNING)], "another job"),
        ([OfferReply(b"x")], "does not send"),
        ([Accept(JOB), _result(), Progress(JOB, JobState.RUNNING)], "after the end"),
        ([Reject(JOB, RejectCode.BUSY, "busy"), Accept(JOB)], "after the end"),
    ],
)
def test_a_requester_refuses_answers_out_of_order(answers: list[JobMessage], error: str) -> None:
    requester = _submitted()
    with pytest.raises(RemoteProtocolError, match=error):
        _drain(requester, [_frames(*answers)])
    assert requester.state is SessionState.FAILED
    with pytest.raises(RemoteProtocolError, match="already broke"):
        requester.next_event()


def test_a_requester_refuses_a_receipt_another_worker_signed() -> None:
    requester = _submitted()
    with pytest.raises(IntegrityError):
        _drain(requester, [_frames(Accept(JOB), _result(key=OTHER))])
    assert requester.state is SessionState.FAILED


def test_a_requester_refuses_a_receipt_for_another_job() -> None:
    with pytest.raises(RemoteProtocolError, match="another job"):
        _drain(_submitted(), [_frames(Accept(JOB), _result(job=bytes(32)))])


def test_a_stream_closed_before_the_answer_is_a_protocol_error() -> None:
    requester = _submitted()
    with pytest.raises(RemoteProtocolError, match="before answering"):
        _drain(requester, [_frames(Accept(JOB))])
    with pytest.raises(RemoteProtocolError, match="inside a job message"):
        _drain(_submitted(), [_frames(Accept(JOB))[:-1]])


def test_a_refusal_ends_the_job_and_is_returned_for_the_shell_to_raise() -> None:
    requester = _submitted()
    reject = Reject(JOB, RejectCode.FORBIDDEN_IMPORT, "no")
    assert _drain(requester, [_frames(Accept(JOB), reject)]) == [Accept(JOB), reject, Closed()]
    assert requester.state is SessionState.REFUSED
    assert requester.cancel() is None


def test_an_offer_request_is_answered_by_an_offer_or_a_refusal_naming_no_job() -> None:
    requester = RequesterSession(WORKER.public_key)
    requester.offer_request()
    refusal = Reject(NO_JOB, RejectCode.NOT_OFFERING, "off")
    assert _drain(requester, [_frames(refusal)]) == [refusal, Closed()]
    other = RequesterSession(WORKER.public_key)
    other.offer_request()
    with pytest.raises(RemoteProtocolError, match="offer request"):
        _drain(other, [_frames(Accept(JOB))])


def test_a_requester_sends_one_exchange_per_stream() -> None:
    requester = _submitted()
    with pytest.raises(LocalProtocolError):
        requester.submit(SUBMIT)
    with pytest.raises(LocalProtocolError):
        requester.offer_request()


def test_cancel_is_sent_once_while_the_job_runs() -> None:
    requester = RequesterSession(WORKER.public_key)
    assert requester.cancel() is None
    requester.submit(SUBMIT)
    assert requester.cancel() == _frames(Cancel(JOB))
    assert requester.cancel() is None
    # What the worker had already sent, and its refusal, still arrive.
    reject = Reject(JOB, RejectCode.CANCELLED, "cancelled")
    assert _drain(requester, [_frames(Accept(JOB), reject)])[-2] == reject


def test_a_worker_sees_cancel_at_any_time_after_submit() -> None:
    cases: list[list[JobAnswer]] = [[], [Accept(JOB)], [Accept(JOB), _result()]]
    for answers in cases:
        worker = WorkerSession()
        _drain_open(worker, _frames(SUBMIT))
        for answer in answers:
            worker.send(answer)
        worker.receive_data(_frames(Cancel(JOB)))
        assert worker.next_event() == Cancel(JOB)
        assert worker.cancelled


def _drain_open(worker: WorkerSession, data: bytes) -> list[object]:
    worker.receive_data(data)
    events: list[object] = []
    while (event := worker.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize(
    ("incoming", "error"),
    [
        ([Cancel(JOB)], "cannot begin"),
        ([Accept(JOB)], "cannot begin"),
        ([SUBMIT, SUBMIT], "out of turn"),
        ([OfferRequest(), Cancel(JOB)], "out of turn"),
        ([SUBMIT, Cancel(bytes(32))], "another job"),
        ([SUBMIT, Cancel(JOB), Cancel(JOB)], "twice"),
    ],
)
def test_a_worker_refuses_requests_out_of_order(incoming: list[JobMessage], error: str) -> None:
    worker = WorkerSession()
    with pytest.raises(RemoteProtocolError, match=error):
        _drain_open(worker, _frames(*incoming))
    assert worker.state is SessionState.FAILED


@pytest.mark.parametrize(
    ("first", "answers"),
    [
        (None, [Accept(JOB)]),
        (SUBMIT, [Progress(JOB, JobState.RUNNING)]),
        (SUBMIT, [_result()]),
        (SUBMIT, [OfferReply(b"x")]),
        (SUBMIT, [Accept(bytes(32))]),
        (SUBMIT, [Accept(JOB), Accept(JOB)]),
        (SUBMIT, [Accept(JOB), _result(), Progress(JOB, JobState.RUNNING)]),
        (OfferRequest(), [Accept(JOB)]),
        (OfferRequest(), [Reject(JOB, RejectCode.BUSY, "busy")]),
        (OfferRequest(), [OfferReply(b"x"), OfferReply(b"x")]),
    ],
)
def test_a_worker_cannot_answer_out_of_order(
    first: JobMessage | None, answers: list[OfferReply | Accept | Reject | Progress | Result]
) -> None:
    worker = WorkerSession()
    if first is not None:
        _drain_open(worker, _frames(first))
    *legal, illegal = answers
    for answer in legal:
        worker.send(answer)
    with pytest.raises(LocalProtocolError):
        worker.send(illegal)


def test_a_worker_may_refuse_a_job_before_or_after_accepting_it() -> None:
    cases: list[list[JobAnswer]] = [
        [Reject(JOB, RejectCode.BUSY, "busy")],
        [Accept(JOB), Reject(JOB, "x", "")],
    ]
    for answers in cases:
        worker = WorkerSession()
        _drain_open(worker, _frames(SUBMIT))
        for answer in answers:
            worker.send(answer)
        assert worker.state is SessionState.REFUSED
