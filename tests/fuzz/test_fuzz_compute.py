"""Fuzzing the compute wire formats: job specs, job messages, receipts and offers
(see harness.py for the invariant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.job import (
    Accept,
    Cancel,
    JobState,
    Progress,
    Reject,
    Result,
    Submit,
    decode_job_message,
    encode_job_message,
)
from p2pshare.proto.jobspec import (
    JobLimits,
    JobSpec,
    build_job_spec,
    decode_job_spec,
    encode_job_spec,
)
from p2pshare.proto.offer import (
    Offer,
    SignedOffer,
    decode_offer,
    offer_signing_message,
    sign_offer,
    verify_offer,
)
from p2pshare.proto.receipt import (
    JobStatus,
    Receipt,
    SignedReceipt,
    decode_receipt,
    output_digest,
    receipt_signing_message,
    sign_receipt,
    verify_receipt,
)
from tests.fuzz.harness import check_decoder, fuzz_inputs, fuzz_settings, nested, pack
from tests.fuzz.seeds import CID, CREATED, KEY, OTHER_KEY, unpacked, value_seeds

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.identity import NodeKey

pytestmark = pytest.mark.fuzz

SPECS = (
    build_job_spec(CID),
    build_job_spec(
        CID,
        args=["wordcount", "--lines", "ünï"],
        stdin=CID,
        inputs={"data/a.txt": CID, "b": CID},
        limits=JobLimits(fuel=10**6, memory=2**20, wall_seconds=5, max_output=1024),
    ),
)
SPEC_BYTES = tuple(encode_job_spec(spec) for spec in SPECS)
JOB = SPECS[0].job_id
RECEIPTS = (
    sign_receipt(
        Receipt(JOB, KEY.public_key, JobStatus.OK, 0, 1234, CID, output_digest(b"x")), KEY
    ),
    sign_receipt(
        Receipt(JOB, KEY.public_key, JobStatus.EXIT, 3, 10**15, None, output_digest(b"")), KEY
    ),
)
RECEIPT_BODIES = tuple(signed.body for signed in RECEIPTS)
MESSAGES = tuple(
    encode_job_message(message)
    for message in (
        Submit(SPECS[1], bytes(range(16))),
        Accept(JOB),
        Reject(JOB, "busy", "all 4 slots are taken"),
        Progress(JOB, JobState.RUNNING, 10**9),
        Progress(JOB, JobState.QUEUED),
        Cancel(JOB),
        Result(RECEIPTS[1]),
    )
)
OFFERS = (sign_offer(Offer(KEY.public_key, JobLimits(), 2**30, 4, 2, 10**9, CREATED + 300), KEY),)
OFFER_BODIES = tuple(signed.body for signed in OFFERS)


def _signed_receipt(body: bytes) -> bytes:
    """A mutated body with a valid signature, so the mutation reaches the parser."""
    return body + KEY.sign(receipt_signing_message(body))


def _signed_offer(body: bytes) -> bytes:
    return body + KEY.sign(offer_signing_message(body))


@fuzz_settings
@given(fuzz_inputs(SPEC_BYTES, value_seeds(SPEC_BYTES), max_random=1024))
def test_job_spec(data: bytes) -> None:
    spec = check_decoder(decode_job_spec, data)
    if spec is not None:
        assert isinstance(spec, JobSpec)
        assert encode_job_spec(spec) == data


@fuzz_settings
@given(fuzz_inputs(MESSAGES, value_seeds(MESSAGES), max_random=1024))
def test_job_message(data: bytes) -> None:
    message = check_decoder(decode_job_message, data)
    if message is not None:
        assert encode_job_message(message) == data


receipt_inputs = st.one_of(
    fuzz_inputs(tuple(signed.data for signed in RECEIPTS)),
    fuzz_inputs(RECEIPT_BODIES, value_seeds(RECEIPT_BODIES)).map(_signed_receipt),
)


@fuzz_settings
@given(receipt_inputs)
def test_receipt(data: bytes) -> None:
    signed = check_decoder(decode_receipt, data)
    if signed is not None:
        assert isinstance(signed, SignedReceipt)
        assert signed.data == data


@fuzz_settings
@given(receipt_inputs, st.sampled_from([KEY, OTHER_KEY]), st.sampled_from([None, JOB, bytes(32)]))
def test_receipt_from_a_known_worker(data: bytes, worker: NodeKey, job: bytes | None) -> None:
    signed = check_decoder(lambda raw: verify_receipt(raw, worker=worker.public_key, job=job), data)
    if signed is not None:
        assert worker is KEY
        assert job in (None, signed.receipt.job_id)


offer_inputs = st.one_of(
    fuzz_inputs(tuple(signed.data for signed in OFFERS)),
    fuzz_inputs(OFFER_BODIES, value_seeds(OFFER_BODIES)).map(_signed_offer),
)


@fuzz_settings
@given(offer_inputs)
def test_offer(data: bytes) -> None:
    signed = check_decoder(decode_offer, data)
    if signed is not None:
        assert isinstance(signed, SignedOffer)
        assert signed.data == data


@fuzz_settings
@given(offer_inputs, st.integers(CREATED - 1000, CREATED + 1000))
def test_offer_from_a_known_worker(data: bytes, now: int) -> None:
    signed = check_decoder(lambda raw: verify_offer(raw, worker=KEY.public_key, now=now), data)
    if signed is not None:
        assert signed.offer.expires >= now


def test_seeds_decode() -> None:
    """Mutations start from valid encodings, or they would test only the first check."""
    assert [decode_job_spec(data) for data in SPEC_BYTES] == list(SPECS)
    assert [decode_receipt(signed.data) for signed in RECEIPTS] == list(RECEIPTS)
    assert [encode_job_message(decode_job_message(data)) for data in MESSAGES] == list(MESSAGES)
    assert verify_offer(OFFERS[0].data, worker=KEY.public_key, now=CREATED) == OFFERS[0]


@pytest.mark.parametrize(
    ("seed", "decode"),
    [
        (SPEC_BYTES[0], decode_job_spec),
        (MESSAGES[2], decode_job_message),
        (RECEIPT_BODIES[0], lambda body: decode_receipt(_signed_receipt(body))),
        (OFFER_BODIES[0], lambda body: decode_offer(_signed_offer(body))),
    ],
    ids=["spec", "message", "receipt", "offer"],
)
def test_deep_nesting_is_a_protocol_error(seed: bytes, decode: Callable[[bytes], object]) -> None:
    # A version or type field 1000 levels deep once made the error message itself fail.
    value = unpacked(seed)
    assert isinstance(value, dict)
    for key in value:
        assert check_decoder(decode, pack({**value, key: nested(1000)})) is None
