"""Compute receipts: a worker's signed statement of how a job ended.

Sans-IO.  Normative description: docs/compute.md, "Outcomes".

A receipt states the job ID, the worker key, the status, exit code, fuel used, output
content ID and the BLAKE3 digest of stdout.  Replicas agree when their
:attr:`Receipt.outcome` is equal.

Wire form of a signed receipt (:mod:`p2pshare.proto.signed`): ``body || signature``
where ``body`` is the canonical msgpack receipt and the 64-byte Ed25519 signature
covers ``RECEIPT_DOMAIN + body``.  The signature sits at a fixed place so a requester
who knows which worker it asked checks it before parsing a single byte
(:func:`verify_receipt`): any damage to a receipt is then an IntegrityError.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import blake3

from p2pshare.errors import IntegrityError, LocalProtocolError, P2PShareError, RemoteProtocolError
from p2pshare.proto.canonical import (
    Codec,
    Limits,
    expect_bytes,
    expect_int,
    expect_map,
    expect_str,
    pack,
)
from p2pshare.proto.cid import CID_BYTES, ContentId
from p2pshare.proto.jobspec import (
    JOB_ID_SIZE,
    JOB_VERSION,
    MAX_FUEL,
    PUBLIC_KEY_SIZE,
    parse_cid,
)
from p2pshare.proto.keys import is_small_order_key, peer_id_from_public_key
from p2pshare.proto.signed import SIGNATURE_SIZE, SignedKind

if TYPE_CHECKING:
    from p2pshare.proto.signed import Signer

DIGEST_SIZE: Final = 32
RECEIPT_DOMAIN: Final = b"p2pshare-receipt-v1\0"

# WASI's proc_exit accepts 0..125 in wasmtime; 255 leaves room for other runtimes.
MAX_EXIT_CODE: Final = 255

_RECEIPT_KEYS: Final = ("v", "job", "worker", "status", "exit", "fuel", "output", "digest")
# Smallest and largest encoded receipt body: fixed-size fields plus the variable ones.
_MAX_RECEIPT_BODY: Final = 512
MAX_RECEIPT_SIZE: Final = _MAX_RECEIPT_BODY + SIGNATURE_SIZE


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


def sign_receipt(receipt: Receipt, signer: Signer) -> SignedReceipt:
    """Sign a receipt with the worker's own key (the one it names)."""
    return SignedReceipt(receipt, *_RECEIPTS.sign(receipt, signer))


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
        None if output is None else parse_cid(output, "output content ID"),
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


RECEIPT_BODY: Final = Codec(
    what="receipt",
    encode=encode_receipt,
    parse=_parse_receipt,
    limits=Limits(
        max_size=_MAX_RECEIPT_BODY,
        max_str_len=max(len(status.value) for status in JobStatus),
        max_bin_len=max(CID_BYTES, JOB_ID_SIZE),
        max_array_len=0,
        max_map_len=len(_RECEIPT_KEYS),
    ),
)
_RECEIPTS: Final = SignedKind(
    name="receipt",
    role="worker",
    domain=RECEIPT_DOMAIN,
    body=RECEIPT_BODY,
    max_size=MAX_RECEIPT_SIZE,
    signer=lambda receipt: receipt.worker,
)
receipt_signing_message: Final = _RECEIPTS.signing_message


def decode_receipt(data: bytes) -> SignedReceipt:
    """Decode a signed receipt and check its signature against the worker key it names.

    RemoteProtocolError for malformed bytes, IntegrityError for a bad signature.  A
    requester that knows which worker it asked uses :func:`verify_receipt` instead.
    """
    return SignedReceipt(*_RECEIPTS.open_trailing(data))


def verify_receipt(data: bytes, *, worker: bytes, job: bytes | None = None) -> SignedReceipt:
    """Check a receipt from ``worker`` (its public key), optionally for job ID ``job``.

    The signature is checked before the body is parsed, so any alteration of the
    bytes, the length included, raises IntegrityError.
    """
    signed = SignedReceipt(*_RECEIPTS.verify_trailing(data, key=worker))
    check_receipt(signed, worker=worker, job=job)
    return signed


def check_receipt(signed: SignedReceipt, *, worker: bytes, job: bytes | None = None) -> None:
    """Raise IntegrityError unless the receipt names this worker (and job)."""
    _RECEIPTS.check_signer(signed.receipt, worker)
    if job is not None and signed.receipt.job_id != job:
        raise IntegrityError("the receipt is for another job")
