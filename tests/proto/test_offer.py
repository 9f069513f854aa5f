"""Signed compute offers: round trips, tampering, expiry, refusals, the test vector.

Tampering and garbage, alike for every signed kind, are in test_signed.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import blake3
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from p2pshare.identity import NodeKey
from p2pshare.proto import job
from p2pshare.proto.cid import ContentId
from p2pshare.proto.job import OfferReply, decode_job_message, encode_job_message
from p2pshare.proto.jobspec import (
    MAX_FUEL,
    MAX_MEMORY,
    MAX_OUTPUT_BYTES,
    MAX_WALL_SECONDS,
    JobLimits,
)
from p2pshare.proto.offer import (
    CLOCK_SKEW,
    COMPUTE_KEY,
    MAX_EXPIRES,
    MAX_INPUT_BYTES,
    MAX_OFFER_LIFETIME,
    MAX_OFFER_SIZE,
    MAX_SLOTS,
    MAX_SPEED,
    OFFER_DOMAIN,
    Offer,
    OfferExpiredError,
    decode_offer,
    encode_offer,
    offer_signing_message,
    sign_offer,
    verify_offer,
)
from p2pshare.proto.receipt import RECEIPT_DOMAIN
from tests.proto.signed_kinds import WORKER, offers

if TYPE_CHECKING:
    from collections.abc import Callable

OTHER = NodeKey.from_seed(bytes(range(1, 33)))
SMALL_ORDER_KEY = bytes(32)
EXPIRES = 1_767_225_600  # 2026-01-01T00:00:00Z
# Latest and earliest moments at which an offer expiring at EXPIRES is accepted.
LAST_VALID = EXPIRES
FIRST_VALID = EXPIRES - MAX_OFFER_LIFETIME - CLOCK_SKEW

# The test vector of docs/compute.md, "Offers".
VECTOR_BODY = (
    "88a17601a6776f726b6572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc866412"
    "5531b8a66c696d69747384a46675656ccf000000e8d4a51000a66d656d6f7279ce10000000a477616c6c"
    "3ca66f7574707574ce04000000a96d61785f696e707574ce40000000a5736c6f747302a46672656501a5"
    "7370656564cf00000001dcd65000a765787069726573ce6955b900"
)
VECTOR_SIGNATURE = (
    "4e3304573fba35dfcfd802e38a5911ccd2682a0bd58ae4450492bf0b7d9d285a04646e1f194ceb31ab25"
    "d07f6b9e2fa5d2d5c89937ba91701d3a7da9d879620f"
)
VECTOR_COMPUTE_KEY = "1e200e87e6f21baeec2fc589f44b88d081255c45e5cab8dd733249eb51a91ddf7967"


def _offer(**change: Any) -> Offer:
    fields: dict[str, Any] = {
        "worker": WORKER.public_key,
        "limits": JobLimits(
            fuel=10**12, memory=256 * 1024**2, wall_seconds=60, max_output=64 * 1024**2
        ),
        "max_input": 1024**3,
        "slots": 2,
        "free": 1,
        "speed": 8 * 10**9,
        "expires": EXPIRES,
    }
    return Offer(**(fields | change))


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _body_map() -> dict[str, Any]:
    value: dict[str, Any] = msgpack.unpackb(encode_offer(_offer()))
    return value


def _signed(body: bytes, key: NodeKey = WORKER) -> bytes:
    """``body`` as a correctly signed offer, whatever it says."""
    return body + key.sign(offer_signing_message(body))


# --- constants --------------------------------------------------------------------------


def test_compute_key_is_the_blake3_multihash_of_the_service_name() -> None:
    digest = blake3.blake3(b"p2pshare-compute/wasm32-wasip1/v1").digest()
    assert ContentId(digest).multihash == COMPUTE_KEY
    assert COMPUTE_KEY.hex() == VECTOR_COMPUTE_KEY


def test_the_largest_offer_fits_the_size_bound() -> None:
    largest = _offer(
        limits=JobLimits(
            fuel=MAX_FUEL,
            memory=MAX_MEMORY,
            wall_seconds=MAX_WALL_SECONDS,
            max_output=MAX_OUTPUT_BYTES,
        ),
        max_input=MAX_INPUT_BYTES,
        slots=MAX_SLOTS,
        free=MAX_SLOTS,
        speed=MAX_SPEED,
        expires=MAX_EXPIRES,
    )
    assert len(sign_offer(largest, WORKER).data) <= MAX_OFFER_SIZE
    assert MAX_OFFER_SIZE is job.MAX_OFFER_SIZE


def test_offer_vector() -> None:
    signed = sign_offer(_offer(), WORKER)
    assert signed.body.hex() == VECTOR_BODY
    assert signed.signature.hex() == VECTOR_SIGNATURE
    assert verify_offer(signed.data, worker=WORKER.public_key, now=EXPIRES - 120) == signed


# --- round trips ------------------------------------------------------------------------


@given(offers(), st.data())
def test_offer_round_trips(offer: Offer, data: st.DataObject) -> None:
    signed = sign_offer(offer, WORKER)
    assert signed.body == encode_offer(offer)
    assert decode_offer(signed.data) == signed
    lead = data.draw(st.integers(0, MAX_OFFER_LIFETIME + CLOCK_SKEW))
    assert verify_offer(signed.data, worker=WORKER.public_key, now=offer.expires - lead) == signed
    assert signed.offer.worker_peer_id == WORKER.peer_id


@given(offers())
def test_offer_travels_in_an_offer_reply(offer: Offer) -> None:
    signed = sign_offer(offer, WORKER)
    reply = decode_job_message(encode_job_message(OfferReply(signed.data)))
    assert isinstance(reply, OfferReply)
    assert verify_offer(reply.offer, worker=WORKER.public_key, now=offer.expires) == signed


# --- tampering --------------------------------------------------------------------------


def test_offer_signature_is_domain_separated() -> None:
    signed = sign_offer(_offer(), WORKER)
    assert OFFER_DOMAIN == b"p2pshare-offer-v1\0"
    assert offer_signing_message(signed.body) == OFFER_DOMAIN + signed.body
    # The same body signed as a receipt is no offer.
    forged = signed.body + WORKER.sign(RECEIPT_DOMAIN + signed.body)
    with pytest.raises(IntegrityError):
        verify_offer(forged, worker=WORKER.public_key, now=EXPIRES)
    with pytest.raises(IntegrityError):
        decode_offer(forged)


# --- expiry -----------------------------------------------------------------------------


@pytest.mark.parametrize("now", [LAST_VALID, LAST_VALID - 1, FIRST_VALID + 1, FIRST_VALID])
def test_offer_is_valid_from_its_lifetime_plus_skew_before_expiry_until_expiry(now: int) -> None:
    signed = sign_offer(_offer(), WORKER)
    assert verify_offer(signed.data, worker=WORKER.public_key, now=now) == signed


def test_expired_offer_is_refused() -> None:
    data = sign_offer(_offer(), WORKER).data
    with pytest.raises(OfferExpiredError, match="1 seconds ago"):
        verify_offer(data, worker=WORKER.public_key, now=LAST_VALID + 1)
    assert issubclass(OfferExpiredError, RemoteError)
    # Decoding alone does not look at the clock.
    assert decode_offer(data).offer.expires == EXPIRES


def test_offer_expiring_too_far_ahead_is_refused() -> None:
    data = sign_offer(_offer(), WORKER).data
    with pytest.raises(RemoteProtocolError, match="more than the 600"):
        verify_offer(data, worker=WORKER.public_key, now=FIRST_VALID - 1)


# --- keys -------------------------------------------------------------------------------


def test_offer_from_another_worker_is_refused() -> None:
    signed = sign_offer(_offer(), WORKER)
    with pytest.raises(IntegrityError):
        verify_offer(signed.data, worker=OTHER.public_key, now=EXPIRES)
    with pytest.raises(LocalProtocolError):
        sign_offer(_offer(), OTHER)
    # A worker passing off another worker's offer, signed with its own key:
    relayed = _signed(encode_offer(_offer(worker=OTHER.public_key)))
    with pytest.raises(IntegrityError, match="another worker"):
        verify_offer(relayed, worker=WORKER.public_key, now=EXPIRES)
    with pytest.raises(IntegrityError):
        decode_offer(relayed)


def test_small_order_key_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="small-order"):
        _offer(worker=SMALL_ORDER_KEY)
    # Any signature verifies under such a key: the check must not depend on it.
    body = _pack(_body_map() | {"worker": SMALL_ORDER_KEY})
    data = body + bytes(64)
    with pytest.raises(RemoteProtocolError, match="small-order"):
        decode_offer(data)
    with pytest.raises(IntegrityError):
        verify_offer(data, worker=SMALL_ORDER_KEY, now=EXPIRES)


# --- out-of-range fields ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"slots": 0},
        {"slots": MAX_SLOTS + 1},
        {"free": 3},
        {"free": -1},
        {"max_input": -1},
        {"max_input": MAX_INPUT_BYTES + 1},
        {"speed": -1},
        {"speed": MAX_SPEED + 1},
        {"expires": -1},
        {"expires": MAX_EXPIRES + 1},
        {"slots": True},
        {"worker": bytes(range(31))},
        {"worker": WORKER.public_key.hex()},
        {"limits": None},
    ],
)
def test_out_of_range_offers_cannot_be_built(change: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        _offer(**change)


MALFORMED_BODIES: dict[str, Callable[[], bytes]] = {
    "no slots": lambda: _pack(_body_map() | {"slots": 0}),
    "too many slots": lambda: _pack(_body_map() | {"slots": MAX_SLOTS + 1}),
    "more free than slots": lambda: _pack(_body_map() | {"free": 3}),
    "negative free": lambda: _pack(_body_map() | {"free": -1}),
    "huge input": lambda: _pack(_body_map() | {"max_input": MAX_INPUT_BYTES + 1}),
    "huge speed": lambda: _pack(_body_map() | {"speed": MAX_SPEED + 1}),
    "far expiry": lambda: _pack(_body_map() | {"expires": MAX_EXPIRES + 1}),
    "zero fuel": lambda: _pack(_body_map() | {"limits": _body_map()["limits"] | {"fuel": 0}}),
    "bool free": lambda: _pack(_body_map() | {"free": True}),
    "float speed": lambda: _pack(_body_map() | {"speed": 1.0}),
    "short key": lambda: _pack(_body_map() | {"worker": bytes(31)}),
    "keys reordered": lambda: _pack(dict(reversed(_body_map().items()))),
    "extra key": lambda: _pack(_body_map() | {"note": 1}),
    "missing key": lambda: _pack({k: v for k, v in _body_map().items() if k != "speed"}),
    "version 2": lambda: _pack(_body_map() | {"v": 2}),
    "wide integer": lambda: encode_offer(_offer()).replace(b"\xa5slots\x02", b"\xa5slots\xcc\x02"),
    "trailing byte": lambda: encode_offer(_offer()) + b"\xc0",
    "array": lambda: _pack(list(_body_map().values())),
}


@pytest.mark.parametrize("make", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_well_signed_malformed_offers_are_refused(make: Callable[[], bytes]) -> None:
    data = _signed(make())
    with pytest.raises(RemoteProtocolError):
        decode_offer(data)
    with pytest.raises(IntegrityError, match="malformed"):
        verify_offer(data, worker=WORKER.public_key, now=EXPIRES)
