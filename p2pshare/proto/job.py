"""The compute job protocol's messages, one per frame.

Sans-IO: values in, bytes out and back; the order in which they may travel is kept
by :mod:`p2pshare.proto.jobsession`, the streams by the worker and requester shells.
Normative description: docs/compute.md.

Messages travel one per frame (:mod:`p2pshare.proto.framing`) as a canonical msgpack
map whose first key ``"t"`` names the type: OFFER_REQUEST, SUBMIT and CANCEL from the
requester, OFFER, ACCEPT, REJECT, PROGRESS and RESULT from the worker.  SUBMIT carries
a job spec (:mod:`p2pshare.proto.jobspec`), RESULT a signed receipt
(:mod:`p2pshare.proto.receipt`); this module re-exports their names, which most users
of the protocol need together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.canonical import (
    decode_canonical,
    expect_bytes,
    expect_int,
    expect_map,
    expect_str,
    pack,
    unpack,
)
from p2pshare.proto.jobspec import (
    JOB_ID_SIZE,
    JOB_VERSION,
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_FUEL,
    MAX_INPUTS,
    MAX_MEMORY,
    MAX_OUTPUT_BYTES,
    MAX_SPEC_SIZE,
    MAX_WALL_SECONDS,
    MIN_MEMORY,
    InputFile,
    JobLimits,
    JobSpec,
    build_job_spec,
    check_spec,
    decode_job_spec,
    encode_job_spec,
    job_id,
)
from p2pshare.proto.offer import MAX_OFFER_SIZE
from p2pshare.proto.receipt import (
    MAX_EXIT_CODE,
    MAX_RECEIPT_SIZE,
    RECEIPT_DOMAIN,
    JobStatus,
    Receipt,
    SignedReceipt,
    check_receipt,
    decode_receipt,
    encode_receipt,
    output_digest,
    receipt_signing_message,
    sign_receipt,
    verify_receipt,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# Re-exported: a user of the protocol needs the spec and receipt names with the messages.
__all__ = [
    "JOB_ID_SIZE",
    "JOB_VERSION",
    "MAX_ARGS",
    "MAX_ARG_BYTES",
    "MAX_EXIT_CODE",
    "MAX_FUEL",
    "MAX_INPUTS",
    "MAX_MEMORY",
    "MAX_OFFER_SIZE",
    "MAX_OUTPUT_BYTES",
    "MAX_SPEC_SIZE",
    "MAX_WALL_SECONDS",
    "MIN_MEMORY",
    "RECEIPT_DOMAIN",
    "InputFile",
    "JobLimits",
    "JobSpec",
    "JobStatus",
    "Receipt",
    "SignedReceipt",
    "build_job_spec",
    "check_receipt",
    "decode_job_spec",
    "decode_receipt",
    "encode_job_spec",
    "encode_receipt",
    "job_id",
    "output_digest",
    "receipt_signing_message",
    "sign_receipt",
    "verify_receipt",
]

PROTOCOL_ID: Final = "/p2pshare/compute/1.0.0"
NONCE_SIZE: Final = 16
MAX_MESSAGE_SIZE: Final = MAX_SPEC_SIZE + 1024
MAX_REJECT_MESSAGE: Final = 1024
# RESULT carries stdout up to this size, so small outputs need no download.
MAX_INLINE_OUTPUT: Final = 64 * 1024
# Bytes a worker fetched for one job: above any module plus inputs it would take.
MAX_FETCHED: Final = 2**50
_MAX_CODE: Final = 32
_CODE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*")


class JobState(StrEnum):
    """Where an accepted job is, as PROGRESS reports it."""

    QUEUED = "queued"
    FETCHING = "fetching"
    COMPILING = "compiling"
    RUNNING = "running"


class RejectCode:
    """The ``code`` of REJECT: why a worker will not run (or finish) a job.

    How a run ended is a :class:`JobStatus` in the receipt, not a rejection.  Codes
    this version does not know are kept as they are.
    """

    INVALID_SPEC = "invalid_spec"
    LIMIT_EXCEEDS_OFFER = "limit_exceeds_offer"
    OVERSIZE = "oversize"
    HASH_MISMATCH = "hash_mismatch"
    INVALID_MODULE = "invalid_module"
    FORBIDDEN_IMPORT = "forbidden_import"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    NO_SPACE = "no_space"
    # Also the answer to OFFER_REQUEST (with an all-zero job ID) of a node with compute off.
    NOT_OFFERING = "not_offering"
    CANCELLED = "cancelled"
    UNSUPPORTED_VERSION = "unsupported_version"
    INTERNAL = "internal"


class JobRejectedError(RemoteError):
    """A worker refused a job; ``code`` is a :class:`RejectCode` value (or a newer one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    """SUBMIT: run ``spec``.  ``nonce`` tells apart two submissions of one job."""

    spec: JobSpec
    nonce: bytes

    @property
    def job_id(self) -> bytes:
        return job_id(self.spec)


@dataclass(frozen=True)
class Accept:
    job_id: bytes


@dataclass(frozen=True)
class Reject:
    job_id: bytes
    code: str
    message: str

    def exception(self) -> JobRejectedError:
        """The typed error for this refusal; the peer's text is made printable."""
        text = "".join(c if c.isprintable() else "?" for c in self.message)
        return JobRejectedError(self.code, f"the worker refused the job ({self.code}): {text}")


@dataclass(frozen=True)
class Progress:
    """PROGRESS: ``fetched`` counts the module, stdin and input bytes fetched so far."""

    job_id: bytes
    state: JobState
    fuel_used: int | None = None
    fetched: int | None = None


@dataclass(frozen=True)
class Cancel:
    job_id: bytes


@dataclass(frozen=True)
class OfferRequest:
    """OFFER_REQUEST: the requester asks for the worker's current signed offer."""


@dataclass(frozen=True)
class OfferReply:
    """OFFER: the worker's signed offer bytes.

    Only their size is checked here; the requester checks them with
    :func:`p2pshare.proto.offer.verify_offer`, which needs the clock.
    """

    offer: bytes


@dataclass(frozen=True)
class Result:
    """RESULT: the signed receipt that ends a job.

    ``stdout`` carries the output itself when it is at most :data:`MAX_INLINE_OUTPUT`
    bytes, so a small result needs no download; it must match the receipt's digest.
    """

    receipt: SignedReceipt
    stdout: bytes | None = None

    @property
    def job_id(self) -> bytes:
        return self.receipt.receipt.job_id


JobMessage: TypeAlias = (
    OfferRequest | OfferReply | Submit | Accept | Reject | Progress | Cancel | Result
)

_MESSAGE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "offer_request": ("t",),
    "offer": ("t", "offer"),
    "submit": ("t", "spec", "nonce"),
    "accept": ("t", "job"),
    "reject": ("t", "job", "code", "message"),
    "progress": ("t", "job", "state", "fuel", "fetched"),
    "cancel": ("t", "job"),
    "result": ("t", "receipt", "stdout"),
}


def _message_map(message: JobMessage) -> dict[str, object]:  # noqa: PLR0911 -- one per type
    match message:
        case OfferRequest():
            return {"t": "offer_request"}
        case OfferReply(offer=offer):
            return {"t": "offer", "offer": offer}
        case Submit(spec=spec, nonce=nonce):
            return {"t": "submit", "spec": encode_job_spec(spec), "nonce": nonce}
        case Accept(job_id=job):
            return {"t": "accept", "job": job}
        case Reject(job_id=job, code=code, message=text):
            return {"t": "reject", "job": job, "code": code, "message": text}
        case Progress(job_id=job, state=state, fuel_used=fuel, fetched=fetched):
            return {
                "t": "progress",
                "job": job,
                "state": state.value,
                "fuel": fuel,
                "fetched": fetched,
            }
        case Cancel(job_id=job):
            return {"t": "cancel", "job": job}
        case Result(receipt=signed, stdout=stdout):
            return {"t": "result", "receipt": signed.data, "stdout": stdout}
    raise LocalProtocolError(f"{message!r} is not a job message")


def encode_job_message(message: JobMessage) -> bytes:
    """The frame payload of ``message``; LocalProtocolError if the protocol forbids it."""
    try:
        _check_message(message)
    except (RemoteProtocolError, IntegrityError) as exc:
        raise LocalProtocolError(f"invalid job message: {exc}") from exc
    return pack(_message_map(message))


def _check_message(message: JobMessage) -> None:
    """Field checks of the encoder; the decoder applies the same while parsing."""
    match message:
        case OfferReply(offer=offer):
            _offer(offer)
        case Submit(spec=spec, nonce=nonce):
            check_spec(spec, RemoteProtocolError)
            expect_bytes(nonce, what="nonce", length=NONCE_SIZE, max_len=NONCE_SIZE)
            if len(encode_job_spec(spec)) > MAX_SPEC_SIZE:
                raise RemoteProtocolError(f"a job spec has at most {MAX_SPEC_SIZE} bytes")
        case Reject(job_id=job, code=code, message=text):
            _job(job)
            _code(code)
            _text(text)
        case Progress(job_id=job, state=state, fuel_used=fuel, fetched=fetched):
            _job(job)
            if not isinstance(state, JobState):
                raise RemoteProtocolError(f"progress state {state!r} is unknown")
            _fuel(fuel)
            _fetched(fetched)
        case Accept(job_id=job) | Cancel(job_id=job):
            _job(job)
        case Result(receipt=signed, stdout=stdout):
            # The receipt itself is checked when built (sign_receipt, decode_receipt).
            _check_inline(signed, stdout)
        case OfferRequest():
            pass


def _job(value: object) -> bytes:
    return expect_bytes(value, what="job ID", length=JOB_ID_SIZE, max_len=JOB_ID_SIZE)


def _offer(value: object) -> bytes:
    return expect_bytes(value, what="signed offer", max_len=MAX_OFFER_SIZE)


def _fuel(value: object) -> int | None:
    return None if value is None else expect_int(value, what="fuel used", low=0, high=MAX_FUEL)


def _fetched(value: object) -> int | None:
    if value is None:
        return None
    return expect_int(value, what="fetched bytes", low=0, high=MAX_FETCHED)


def _code(value: object) -> str:
    code = expect_str(value, what="reject code")
    if len(code) > _MAX_CODE or not _CODE_PATTERN.fullmatch(code):
        raise RemoteProtocolError(
            f"a reject code is at most {_MAX_CODE} lower-case letters, digits and _"
        )
    return code


def _text(value: object) -> str:
    text = expect_str(value, what="reject message")
    if len(text) > MAX_REJECT_MESSAGE:
        raise RemoteProtocolError(f"a reject message has at most {MAX_REJECT_MESSAGE} characters")
    return text


def _parse_submit(spec: object, nonce: object) -> Submit:
    data = expect_bytes(spec, what="job spec", max_len=MAX_SPEC_SIZE)
    return Submit(
        decode_job_spec(data),
        expect_bytes(nonce, what="nonce", length=NONCE_SIZE, max_len=NONCE_SIZE),
    )


def _parse_progress(job: object, state: object, fuel: object, fetched: object) -> Progress:
    try:
        job_state = JobState(expect_str(state, what="progress state"))
    except ValueError:
        raise RemoteProtocolError(f"progress state {state!r} is unknown") from None
    return Progress(_job(job), job_state, _fuel(fuel), _fetched(fetched))


def _parse_result(receipt: object, stdout: object) -> Result:
    signed = decode_receipt(expect_bytes(receipt, what="receipt", max_len=MAX_RECEIPT_SIZE))
    inline = (
        None if stdout is None else expect_bytes(stdout, what="stdout", max_len=MAX_INLINE_OUTPUT)
    )
    _check_inline(signed, inline)
    return Result(signed, inline)


def _check_inline(signed: SignedReceipt, stdout: bytes | None) -> None:
    if stdout is None:
        return
    if type(stdout) is not bytes or len(stdout) > MAX_INLINE_OUTPUT:
        raise RemoteProtocolError(f"inline stdout is at most {MAX_INLINE_OUTPUT} bytes")
    if output_digest(stdout) != signed.receipt.digest:
        raise IntegrityError("the stdout sent with the receipt does not match its digest")


_PARSERS: Final[dict[str, Callable[..., JobMessage]]] = {
    "offer_request": OfferRequest,
    "offer": lambda offer: OfferReply(_offer(offer)),
    "submit": _parse_submit,
    "accept": lambda job: Accept(_job(job)),
    "reject": lambda job, code, text: Reject(_job(job), _code(code), _text(text)),
    "progress": _parse_progress,
    "cancel": lambda job: Cancel(_job(job)),
    "result": _parse_result,
}


def _parse_message(value: object) -> JobMessage:
    if not isinstance(value, dict) or not value:
        raise RemoteProtocolError("a job message must be a non-empty map")
    kind = value.get("t")
    if type(kind) is not str or kind not in _MESSAGE_KEYS:
        raise RemoteProtocolError(f"job message type {kind!r} is unknown")
    fields = expect_map(value, _MESSAGE_KEYS[kind], what=f"{kind.upper()} message")
    return _PARSERS[kind](*fields[1:])


def decode_job_message(data: bytes) -> JobMessage:
    """Decode one untrusted frame payload.

    RemoteProtocolError for anything malformed or not canonical; IntegrityError for a
    RESULT whose receipt signature does not verify.
    """
    value = unpack(
        data,
        what="job message",
        max_size=MAX_MESSAGE_SIZE,
        max_str_len=MAX_REJECT_MESSAGE * 4,
        max_bin_len=MAX_SPEC_SIZE,
        max_array_len=0,
        max_map_len=max(len(keys) for keys in _MESSAGE_KEYS.values()),
    )

    def encode(message: JobMessage) -> bytes:
        return pack(_message_map(message))

    return decode_canonical(
        data, what="job message", value=value, parse=_parse_message, encode=encode
    )
