"""Tampering and garbage, alike for every signed kind: receipts, offers and manifests.

A peer that knows the signer (``Sample.verify``) must see any damage as an
IntegrityError; one that does not (``Kind.decode``) must still raise only typed errors.
"""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, RemoteProtocolError
from p2pshare.proto.offer import MAX_OFFER_SIZE, OfferExpiredError
from tests.proto.signed_kinds import KINDS, WORKER, Kind

TYPED_ERRORS = (RemoteProtocolError, IntegrityError)

each_kind = pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])


def _flip(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@each_kind
@given(data=st.data())
def test_undamaged_bytes_pass_both_checks(kind: Kind, data: st.DataObject) -> None:
    # Without this the tests below would pass for samples that were never valid.
    sample = data.draw(kind.samples)
    assert kind.decode(sample.data) == sample.verify(sample.data)
    assert kind.wire(sample.body, sample.signature) == sample.data


@each_kind
@given(data=st.data())
def test_any_flipped_bit_is_caught(kind: Kind, data: st.DataObject) -> None:
    sample = data.draw(kind.samples)
    damaged = _flip(sample.data, data.draw(st.integers(0, 8 * len(sample.data) - 1)))
    with pytest.raises(IntegrityError):
        sample.verify(damaged)
    with pytest.raises(TYPED_ERRORS):
        kind.decode(damaged)


@each_kind
@given(data=st.data())
def test_flipped_bit_in_the_signature_is_an_integrity_error(
    kind: Kind, data: st.DataObject
) -> None:
    sample = data.draw(kind.samples)
    signature = _flip(sample.signature, data.draw(st.integers(0, 8 * 64 - 1)))
    with pytest.raises(IntegrityError):
        kind.decode(kind.wire(sample.body, signature))


@each_kind
@pytest.mark.parametrize("cut", [1, 63, 64, -1])
@given(data=st.data())
def test_truncated_or_extended_bytes_are_an_integrity_error(
    kind: Kind, cut: int, data: st.DataObject
) -> None:
    sample = data.draw(kind.samples)
    damaged = sample.data[:-cut] if cut > 0 else sample.data + b"\0"
    with pytest.raises(IntegrityError):
        sample.verify(damaged)


@each_kind
# Past the largest receipt and offer, so their size checks are reached too.
@given(data=st.data(), garbage=st.binary(max_size=2 * MAX_OFFER_SIZE))
def test_arbitrary_bytes_give_only_typed_errors(
    kind: Kind, data: st.DataObject, garbage: bytes
) -> None:
    with pytest.raises(TYPED_ERRORS):
        kind.decode(garbage)
    with pytest.raises(IntegrityError):
        data.draw(kind.samples).verify(garbage)


@each_kind
@given(data=st.data())
def test_arbitrary_msgpack_gives_only_typed_errors(kind: Kind, data: st.DataObject) -> None:
    with pytest.raises(TYPED_ERRORS):
        kind.decode(_pack(data.draw(kind.values)))


@each_kind
@given(data=st.data())
def test_arbitrary_signed_msgpack_gives_only_typed_errors(kind: Kind, data: st.DataObject) -> None:
    # The signer itself is the attacker here: the signature is good, the body anything.
    body = _pack(data.draw(kind.values))
    wire = kind.wire(body, WORKER.sign(kind.signing_message(body)))
    with contextlib.suppress(*TYPED_ERRORS):
        kind.decode(wire)
    # A well-formed offer may also be out of date for the clock the sample checks with.
    with contextlib.suppress(*TYPED_ERRORS, OfferExpiredError):
        data.draw(kind.samples).verify(wire)
