"""Compute jobs on the wire: job specs, job IDs, the job protocol's messages, signed receipts.

Sans-IO: values in, bytes out and back; the worker and requester shells own the
streams, the files and the clock.  Normative description: docs/compute.md.

* A **job spec** names everything a run depends on: the module and the stdin by
  content ID, the arguments, the input files (guest path -> content ID) and the
  limits.  Its canonical msgpack bytes are what the **job ID** hashes (BLAKE3), so
  two requesters asking for the same computation name it identically, and the job
  ID doubles as the seed of the guest's deterministic random numbers.
* **Messages** travel one per frame (:mod:`p2pshare.proto.framing`) as a canonical
  msgpack map whose first key ``"t"`` names the type: OFFER_REQUEST, SUBMIT and CANCEL
  from the requester, OFFER, ACCEPT, REJECT, PROGRESS and RESULT from the worker.
* A **receipt** is the worker's signed statement of the outcome: job ID, worker key,
  status, exit code, fuel used, output content ID and the BLAKE3 digest of stdout.
  Replicas agree when their :attr:`Receipt.outcome` is equal.

Wire form of a signed receipt (:mod:`p2pshare.proto.signed`): ``body || signature``
where ``body`` is the canonical msgpack receipt and the 64-byte Ed25519 signature
covers ``RECEIPT_DOMAIN + body``.  The signature sits at a fixed place so a requester
who knows which worker it asked checks it before parsing a single byte
(:func:`verify_receipt`): any damage to a receipt is then an IntegrityError.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias

import blake3

from p2pshare.errors import (
    IntegrityError,
    LocalProtocolError,
    P2PShareError,
    RemoteError,
    RemoteProtocolError,
)
from p2pshare.proto.canonical import (
    decode_canonical,
    expect_bytes,
    expect_int,
    expect_list,
    expect_map,
    expect_str,
    pack,
    unpack,
)
from p2pshare.proto.cid import CID_BYTES, ContentId
from p2pshare.proto.keys import is_small_order_key, peer_id_from_public_key
from p2pshare.proto.paths import MAX_PATH_BYTES, check_tree
from p2pshare.proto.signed import SIGNATURE_SIZE, SignedKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from p2pshare.proto.signed import Signer

PROTOCOL_ID: Final = "/p2pshare/compute/1.0.0"
JOB_VERSION: Final = 1
JOB_ID_SIZE: Final = 32
NONCE_SIZE: Final = 16
PUBLIC_KEY_SIZE: Final = 32
DIGEST_SIZE: Final = 32
RECEIPT_DOMAIN: Final = b"p2pshare-receipt-v1\0"

# --- limits on what a spec may say -----------------------------------------------------
# Arguments reach the guest as C strings through args_get: bounded so a spec stays small.
MAX_ARGS: Final = 256
MAX_ARG_BYTES: Final = 4096
MAX_INPUTS: Final = 1024
# The whole spec travels in one SUBMIT frame and is decoded before anything else.
MAX_SPEC_SIZE: Final = 256 * 1024
MAX_MESSAGE_SIZE: Final = MAX_SPEC_SIZE + 1024
MAX_REJECT_MESSAGE: Final = 1024
# RESULT carries stdout up to this size, so small outputs need no download.
MAX_INLINE_OUTPUT: Final = 64 * 1024
# A signed offer (p2pshare.proto.offer) travels in OFFER; defined here because that
# module builds on this one.
MAX_OFFER_SIZE: Final = 512
# Bytes a worker fetched for one job: above any module plus inputs it would take.
MAX_FETCHED: Final = 2**50
_MAX_CODE: Final = 32
_CODE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*")

# Protocol maxima: far above any offer, low enough that arithmetic on them stays sane.
# An offer (the worker's own limits) is usually much lower; see JobLimits.exceeding.
MIN_FUEL: Final = 1
MAX_FUEL: Final = 10**15
WASM_PAGE_SIZE: Final = 64 * 1024
MIN_MEMORY: Final = WASM_PAGE_SIZE
# wasm32 addresses 4 GiB at most; memory64 is not part of the job profile.
MAX_MEMORY: Final = 4 * 1024**3
MIN_WALL_SECONDS: Final = 1
MAX_WALL_SECONDS: Final = 24 * 3600
MAX_OUTPUT_BYTES: Final = 1024**3
# WASI's proc_exit accepts 0..125 in wasmtime; 255 leaves room for other runtimes.
MAX_EXIT_CODE: Final = 255

# Defaults of a job that does not say otherwise (docs/compute.md, "Limits").
DEFAULT_FUEL: Final = 5 * 10**11
DEFAULT_MEMORY: Final = 256 * 1024**2
DEFAULT_WALL_SECONDS: Final = 60
DEFAULT_OUTPUT_BYTES: Final = 64 * 1024**2

_SPEC_KEYS: Final = ("v", "module", "args", "stdin", "inputs", "limits")
_LIMIT_KEYS: Final = ("fuel", "memory", "wall", "output")
_RECEIPT_KEYS: Final = ("v", "job", "worker", "status", "exit", "fuel", "output", "digest")
# Smallest and largest encoded receipt body: fixed-size fields plus the variable ones.
_MAX_RECEIPT_BODY: Final = 512
_MAX_RECEIPT_SIZE: Final = _MAX_RECEIPT_BODY + SIGNATURE_SIZE


class JobStatus(StrEnum):
    """How a run ended, as a receipt states it (docs/compute.md, "Outcomes")."""

    OK = "ok"
    TRAP = "trap"
    OUT_OF_FUEL = "out_of_fuel"
    MEMORY_LIMIT = "memory_limit"
    STACK_OVERFLOW = "stack_overflow"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    FORBIDDEN_IMPORT = "forbidden_import"
    INVALID_MODULE = "invalid_module"
    EXIT = "exit"

    @property
    def is_evidence(self) -> bool:
        """Whether replicas ending this way can confirm each other.

        Where a timeout stopped a run (and its fuel count) depends on the machine,
        so two timeouts agreeing says nothing (docs/compute.md, "Deterministic profile").
        """
        return self is not JobStatus.TIMEOUT


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


# --- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobLimits:
    """What one run may consume.  Out-of-range values raise LocalProtocolError."""

    fuel: int = DEFAULT_FUEL
    memory: int = DEFAULT_MEMORY
    wall_seconds: int = DEFAULT_WALL_SECONDS
    max_output: int = DEFAULT_OUTPUT_BYTES

    def __post_init__(self) -> None:
        try:
            _check_limit_values(self.fuel, self.memory, self.wall_seconds, self.max_output)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None

    def exceeding(self, maximum: JobLimits) -> list[str]:
        """The names of the limits above ``maximum`` (a worker's offer); empty if none."""
        return [
            name
            for name, mine, theirs in (
                ("fuel", self.fuel, maximum.fuel),
                ("memory", self.memory, maximum.memory),
                ("wall_seconds", self.wall_seconds, maximum.wall_seconds),
                ("max_output", self.max_output, maximum.max_output),
            )
            if mine > theirs
        ]


def encode_limits(limits: JobLimits) -> dict[str, int]:
    """The wire map of limits, as a job spec and a worker's offer carry it."""
    return {
        "fuel": limits.fuel,
        "memory": limits.memory,
        "wall": limits.wall_seconds,
        "output": limits.max_output,
    }


def parse_limits(value: object, *, what: str) -> JobLimits:
    """Limits from their wire map; RemoteProtocolError unless well formed and in range."""
    return _check_limit_values(*expect_map(value, _LIMIT_KEYS, what=what))


def _check_limit_values(fuel: object, memory: object, wall: object, output: object) -> JobLimits:
    """Range checks shared by the decoder and JobLimits itself."""
    values = (
        expect_int(fuel, what="fuel limit", low=MIN_FUEL, high=MAX_FUEL),
        expect_int(memory, what="memory limit", low=MIN_MEMORY, high=MAX_MEMORY),
        expect_int(wall, what="wall-clock limit", low=MIN_WALL_SECONDS, high=MAX_WALL_SECONDS),
        expect_int(output, what="output limit", low=0, high=MAX_OUTPUT_BYTES),
    )
    # object.__new__ skips __post_init__, which is what calls this function.
    limits = object.__new__(JobLimits)
    for name, value in zip(("fuel", "memory", "wall_seconds", "max_output"), values, strict=True):
        object.__setattr__(limits, name, value)
    return limits


# --- job spec -------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """An input file of a job: where the guest finds it, and the content that fills it."""

    path: str
    cid: ContentId


@dataclass(frozen=True)
class JobSpec:
    """Everything a run depends on.  Build with :func:`build_job_spec`.

    ``inputs`` are sorted by path bytes (the canonical order); constructing a spec
    directly skips the checks that :func:`build_job_spec` and the decoder apply.
    """

    module: ContentId
    args: tuple[str, ...] = ()
    stdin: ContentId | None = None
    inputs: tuple[InputFile, ...] = ()
    limits: JobLimits = field(default_factory=JobLimits)

    @property
    def job_id(self) -> bytes:
        return job_id(self)


def _path_order(path: str) -> bytes:
    # surrogatepass: an unencodable path must reach check_tree, which explains the refusal.
    return path.encode("utf-8", "surrogatepass")


def build_job_spec(
    module: ContentId,
    *,
    args: Iterable[str] = (),
    stdin: ContentId | None = None,
    inputs: Mapping[str, ContentId] | None = None,
    limits: JobLimits | None = None,
) -> JobSpec:
    """A checked spec; the order of ``inputs`` does not matter (they are sorted).

    Raises UnsafePathError for an input path a worker would refuse, LocalProtocolError
    for anything else the protocol does not allow.
    """
    spec = JobSpec(
        module=module,
        args=tuple(args),
        stdin=stdin,
        inputs=tuple(
            InputFile(path, cid)
            for path, cid in sorted((inputs or {}).items(), key=lambda item: _path_order(item[0]))
        ),
        limits=limits if limits is not None else JobLimits(),
    )
    _check_spec(spec, LocalProtocolError)
    size = len(encode_job_spec(spec))
    if size > MAX_SPEC_SIZE:
        raise LocalProtocolError(
            f"the job spec would take {size} bytes, more than the {MAX_SPEC_SIZE} allowed; "
            "pass fewer or shorter arguments and input paths"
        )
    return spec


def _check_spec(spec: JobSpec, fail: type[P2PShareError]) -> None:
    if len(spec.args) > MAX_ARGS:
        raise fail(f"a job has at most {MAX_ARGS} arguments, not {len(spec.args)}")
    for arg in spec.args:
        _check_arg(arg, fail)
    if len(spec.inputs) > MAX_INPUTS:
        raise fail(f"a job has at most {MAX_INPUTS} input files, not {len(spec.inputs)}")
    # The inputs become files in one directory on the worker's disk: the share rules
    # (relative, no '..', no case or normalisation collisions) apply unchanged.
    check_tree(entry.path for entry in spec.inputs)
    encoded = [entry.path.encode("utf-8") for entry in spec.inputs]
    if any(a >= b for a, b in itertools.pairwise(encoded)):
        raise fail("job inputs must be sorted by path bytes")


def _check_arg(arg: str, fail: type[P2PShareError]) -> None:
    if type(arg) is not str:
        raise fail("job arguments are strings")
    try:
        size = len(arg.encode("utf-8"))
    except UnicodeEncodeError:
        raise fail("a job argument is not valid UTF-8") from None
    if size > MAX_ARG_BYTES:
        raise fail(f"a job argument has {size} bytes, more than {MAX_ARG_BYTES}")
    # argv reaches the guest as NUL-terminated strings: a NUL would cut the argument.
    if "\0" in arg:
        raise fail("a job argument cannot contain a NUL character")


def encode_job_spec(spec: JobSpec) -> bytes:
    """The canonical bytes of a spec: a map with the keys of ``_SPEC_KEYS`` in that order."""
    return pack(
        {
            "v": JOB_VERSION,
            "module": spec.module.to_bytes(),
            "args": list(spec.args),
            "stdin": None if spec.stdin is None else spec.stdin.to_bytes(),
            "inputs": [[entry.path, entry.cid.to_bytes()] for entry in spec.inputs],
            "limits": encode_limits(spec.limits),
        }
    )


def job_id(spec: JobSpec) -> bytes:
    """The job ID: BLAKE3 of the spec's canonical bytes."""
    return blake3.blake3(encode_job_spec(spec)).digest()


def decode_job_spec(data: bytes) -> JobSpec:
    """Decode untrusted spec bytes; raise RemoteProtocolError unless valid and canonical."""
    value = unpack(
        data,
        what="job spec",
        max_size=MAX_SPEC_SIZE,
        max_str_len=max(MAX_PATH_BYTES, MAX_ARG_BYTES),
        max_bin_len=CID_BYTES,
        max_array_len=max(MAX_ARGS, MAX_INPUTS),
        max_map_len=len(_SPEC_KEYS),
    )
    return decode_canonical(
        data, what="job spec", value=value, parse=_parse_spec, encode=encode_job_spec
    )


def _parse_cid(value: object, what: str) -> ContentId:
    return ContentId.from_bytes(expect_bytes(value, what=what, max_len=CID_BYTES))


def _parse_spec(value: object) -> JobSpec:
    if isinstance(value, dict) and "v" in value and value["v"] != JOB_VERSION:
        raise RemoteProtocolError(
            f"job spec version {value['v']!r} is not supported "
            f"(this p2pshare reads version {JOB_VERSION})"
        )
    version, module, args, stdin, inputs, limits = expect_map(value, _SPEC_KEYS, what="job spec")
    expect_int(version, what="job spec version", low=JOB_VERSION, high=JOB_VERSION)
    spec = JobSpec(
        module=_parse_cid(module, "module content ID"),
        args=tuple(
            expect_str(arg, what="job argument")
            for arg in expect_list(args, what="job arguments", max_len=MAX_ARGS)
        ),
        stdin=None if stdin is None else _parse_cid(stdin, "stdin content ID"),
        inputs=tuple(
            _parse_input(entry)
            for entry in expect_list(inputs, what="job inputs", max_len=MAX_INPUTS)
        ),
        limits=parse_limits(limits, what="job limits"),
    )
    _check_spec(spec, RemoteProtocolError)
    return spec


def _parse_input(value: object) -> InputFile:
    path, cid = expect_list(value, what="job input", length=2, max_len=2)
    return InputFile(expect_str(path, what="input path"), _parse_cid(cid, "input content ID"))


# --- receipts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """A worker's statement of how a job ended.

    ``exit_code`` is non-zero exactly when ``status`` is EXIT; ``digest`` is BLAKE3 of
    the stdout bytes the run produced (all of them, or the part kept when a limit
    stopped it); ``output`` names the share holding them, if the worker stored one.
    """

    job_id: bytes
    worker: bytes
    status: JobStatus
    exit_code: int
    fuel_used: int
    output: ContentId | None
    digest: bytes

    def __post_init__(self) -> None:
        _check_receipt(self, LocalProtocolError)

    @property
    def worker_peer_id(self) -> str:
        return peer_id_from_public_key(self.worker)

    @property
    def outcome(self) -> tuple[JobStatus, int, bytes]:
        """What replicas of a job must agree on: status, exit code, stdout digest.

        Fuel is deterministic too, but only between equal wasmtime versions, and the
        output content ID names a share signed by each worker; neither is compared.
        """
        return (self.status, self.exit_code, self.digest)


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt with the worker's signature and the exact bytes that travel."""

    receipt: Receipt
    body: bytes
    signature: bytes

    @property
    def data(self) -> bytes:
        return self.body + self.signature


def _check_receipt(receipt: Receipt, fail: type[P2PShareError]) -> None:
    if type(receipt.job_id) is not bytes or len(receipt.job_id) != JOB_ID_SIZE:
        raise fail(f"a job ID has {JOB_ID_SIZE} bytes")
    if type(receipt.worker) is not bytes or len(receipt.worker) != PUBLIC_KEY_SIZE:
        raise fail("the worker key must be a 32-byte Ed25519 public key")
    if is_small_order_key(receipt.worker):
        raise fail("the worker key is a small-order Ed25519 point, which has no owner")
    if not isinstance(receipt.status, JobStatus):
        raise fail(f"receipt status {receipt.status!r} is unknown")
    if type(receipt.exit_code) is not int or not 0 <= receipt.exit_code <= MAX_EXIT_CODE:
        raise fail(f"an exit code is between 0 and {MAX_EXIT_CODE}")
    if (receipt.status is JobStatus.EXIT) != (receipt.exit_code != 0):
        raise fail("a receipt has a non-zero exit code exactly when its status is 'exit'")
    if type(receipt.fuel_used) is not int or not 0 <= receipt.fuel_used <= MAX_FUEL:
        raise fail(f"fuel used is between 0 and {MAX_FUEL}")
    if receipt.output is not None and not isinstance(receipt.output, ContentId):
        raise fail("the output is a content ID or nothing")
    if type(receipt.digest) is not bytes or len(receipt.digest) != DIGEST_SIZE:
        raise fail(f"the output digest has {DIGEST_SIZE} bytes")


def output_digest(stdout: bytes) -> bytes:
    """The digest a receipt states for these stdout bytes."""
    return blake3.blake3(stdout).digest()


def encode_receipt(receipt: Receipt) -> bytes:
    """The canonical receipt body: a map with the keys of ``_RECEIPT_KEYS`` in that order."""
    return pack(
        {
            "v": JOB_VERSION,
            "job": receipt.job_id,
            "worker": receipt.worker,
            "status": receipt.status.value,
            "exit": receipt.exit_code,
            "fuel": receipt.fuel_used,
            "output": None if receipt.output is None else receipt.output.to_bytes(),
            "digest": receipt.digest,
        }
    )


def receipt_signing_message(body: bytes) -> bytes:
    return _RECEIPTS.signing_message(body)


def sign_receipt(receipt: Receipt, signer: Signer) -> SignedReceipt:
    """Sign a receipt with the worker's own key (the one it names)."""
    return SignedReceipt(receipt, *_RECEIPTS.sign(receipt, signer))


def _decode_receipt_body(body: bytes) -> Receipt:
    value = unpack(
        body,
        what="receipt",
        max_size=_MAX_RECEIPT_BODY,
        max_str_len=max(len(status.value) for status in JobStatus),
        max_bin_len=max(CID_BYTES, JOB_ID_SIZE),
        max_array_len=0,
        max_map_len=len(_RECEIPT_KEYS),
    )
    return decode_canonical(
        body, what="receipt", value=value, parse=_parse_receipt, encode=encode_receipt
    )


def _parse_receipt(value: object) -> Receipt:
    if isinstance(value, dict) and "v" in value and value["v"] != JOB_VERSION:
        raise RemoteProtocolError(f"receipt version {value['v']!r} is not supported")
    version, job, worker, status, exit_code, fuel, output, digest = expect_map(
        value, _RECEIPT_KEYS, what="receipt"
    )
    expect_int(version, what="receipt version", low=JOB_VERSION, high=JOB_VERSION)
    try:
        job_status = JobStatus(expect_str(status, what="receipt status"))
    except ValueError:
        raise RemoteProtocolError(f"receipt status {status!r} is unknown") from None
    fields = (
        expect_bytes(job, what="job ID", length=JOB_ID_SIZE, max_len=JOB_ID_SIZE),
        expect_bytes(worker, what="worker key", length=PUBLIC_KEY_SIZE, max_len=PUBLIC_KEY_SIZE),
        job_status,
        expect_int(exit_code, what="exit code", low=0, high=MAX_EXIT_CODE),
        expect_int(fuel, what="fuel used", low=0, high=MAX_FUEL),
        None if output is None else _parse_cid(output, "output content ID"),
        expect_bytes(digest, what="output digest", length=DIGEST_SIZE, max_len=DIGEST_SIZE),
    )
    receipt = object.__new__(Receipt)
    for name, item in zip(
        ("job_id", "worker", "status", "exit_code", "fuel_used", "output", "digest"),
        fields,
        strict=True,
    ):
        object.__setattr__(receipt, name, item)
    _check_receipt(receipt, RemoteProtocolError)
    return receipt


_RECEIPTS: Final = SignedKind(
    name="receipt",
    role="worker",
    domain=RECEIPT_DOMAIN,
    encode=encode_receipt,
    decode=_decode_receipt_body,
    signer=lambda receipt: receipt.worker,
)


def decode_receipt(data: bytes) -> SignedReceipt:
    """Decode a signed receipt and check its signature against the worker key it names.

    RemoteProtocolError for malformed bytes, IntegrityError for a bad signature.  A
    requester that knows which worker it asked uses :func:`verify_receipt` instead.
    """
    return SignedReceipt(*_RECEIPTS.open_trailing(data, max_size=_MAX_RECEIPT_SIZE))


def verify_receipt(data: bytes, *, worker: bytes, job: bytes | None = None) -> SignedReceipt:
    """Check a receipt from ``worker`` (its public key), optionally for job ID ``job``.

    The signature is checked before the body is parsed, so any alteration of the
    bytes, the length included, raises IntegrityError.
    """
    signed = SignedReceipt(*_RECEIPTS.verify_trailing(data, key=worker, max_size=_MAX_RECEIPT_SIZE))
    check_receipt(signed, worker=worker, job=job)
    return signed


def check_receipt(signed: SignedReceipt, *, worker: bytes, job: bytes | None = None) -> None:
    """Raise IntegrityError unless the receipt names this worker (and job)."""
    _RECEIPTS.check_signer(signed.receipt, worker)
    if job is not None and signed.receipt.job_id != job:
        raise IntegrityError("the receipt is for another job")


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
            _check_spec(spec, RemoteProtocolError)
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
    signed = decode_receipt(expect_bytes(receipt, what="receipt", max_len=_MAX_RECEIPT_SIZE))
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
