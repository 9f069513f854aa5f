"""Compute offers: a worker's signed statement of what jobs it takes, and until when.

Sans-IO: the shells own the clock and pass ``now`` in.  Normative description:
docs/compute.md, "Offers".

A worker provides :data:`COMPUTE_KEY` in the DHT and answers OFFER_REQUEST with its
current signed offer: the largest limits one job may ask, the most input bytes it
fetches for one job, its slots and how many are free, its measured speed and an
expiry at most :data:`MAX_OFFER_LIFETIME` seconds ahead.

Wire form, as for receipts (:mod:`p2pshare.proto.signed`): ``body || signature`` where
``body`` is the canonical msgpack offer and the 64-byte Ed25519 signature covers
``OFFER_DOMAIN + body``.  A requester knows which peer it asked, so it checks the
signature before parsing (:func:`verify_offer`) and any damage is an IntegrityError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import blake3

from p2pshare.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.canonical import Codec, Limits, expect_bytes, expect_int, expect_map, pack
from p2pshare.proto.cid import BLAKE3_MULTIHASH, DIGEST_SIZE
from p2pshare.proto.jobspec import PUBLIC_KEY_SIZE, JobLimits, encode_limits, parse_limits
from p2pshare.proto.keys import is_small_order_key, peer_id_from_public_key
from p2pshare.proto.multiformats import encode_varint
from p2pshare.proto.signed import SIGNATURE_SIZE, SignedKind

if TYPE_CHECKING:
    from p2pshare.proto.signed import Signer

OFFER_VERSION: Final = 1
# A signed offer travels in OFFER (p2pshare.proto.job), which bounds its payload with this.
MAX_OFFER_SIZE: Final = 512
OFFER_DOMAIN: Final = b"p2pshare-offer-v1\0"
# The DHT key workers provide under, in the multihash form of every provider record
# (ContentId.multihash): a name for the service, not the hash of any content.
COMPUTE_KEY: Final[bytes] = (
    encode_varint(BLAKE3_MULTIHASH)
    + encode_varint(DIGEST_SIZE)
    + blake3.blake3(b"p2pshare-compute/wasm32-wasip1/v1").digest()
)
# Short enough that free slots stay roughly true and a stolen offer soon lapses.
MAX_OFFER_LIFETIME: Final = 600
# Tolerated lead of the worker's clock over the requester's.
CLOCK_SKEW: Final = 60

MAX_INPUT_BYTES: Final = 2**40
MAX_SLOTS: Final = 1024
MAX_SPEED: Final = 10**13
MAX_EXPIRES: Final = 2**40

_OFFER_KEYS: Final = ("v", "worker", "limits", "max_input", "slots", "free", "speed", "expires")
_OFFER_FIELDS: Final = ("worker", "limits", "max_input", "slots", "free", "speed", "expires")
_MAX_OFFER_BODY: Final = MAX_OFFER_SIZE - SIGNATURE_SIZE


class OfferExpiredError(RemoteError):
    """A correctly signed offer whose expiry has passed: ask the worker for a fresh one."""


@dataclass(frozen=True)
class Offer:
    """What a worker takes: limits of one job, input bytes, slots, speed, expiry.

    ``speed`` is the fuel per second one slot ran when the worker measured it;
    ``expires`` is in unix seconds.  Out-of-range values raise LocalProtocolError.
    """

    worker: bytes
    limits: JobLimits
    max_input: int
    slots: int
    free: int
    speed: int
    expires: int

    def __post_init__(self) -> None:
        try:
            _check_offer(self)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None

    @property
    def worker_peer_id(self) -> str:
        return peer_id_from_public_key(self.worker)


@dataclass(frozen=True)
class SignedOffer:
    """An offer with the worker's signature and the exact bytes that travel."""

    offer: Offer
    body: bytes
    signature: bytes

    @property
    def data(self) -> bytes:
        return self.body + self.signature


def _check_offer(offer: Offer) -> None:
    """Range checks shared by the decoder and Offer itself; RemoteProtocolError."""
    worker = expect_bytes(
        offer.worker, what="worker key", length=PUBLIC_KEY_SIZE, max_len=PUBLIC_KEY_SIZE
    )
    if is_small_order_key(worker):
        raise RemoteProtocolError(
            "the worker key is a small-order Ed25519 point, which has no owner"
        )
    if not isinstance(offer.limits, JobLimits):
        raise RemoteProtocolError("the limits of an offer are JobLimits")
    expect_int(offer.max_input, what="input bytes", low=0, high=MAX_INPUT_BYTES)
    slots = expect_int(offer.slots, what="slots", low=1, high=MAX_SLOTS)
    expect_int(offer.free, what="free slots", low=0, high=slots)
    expect_int(offer.speed, what="speed", low=0, high=MAX_SPEED)
    expect_int(offer.expires, what="expiry", low=0, high=MAX_EXPIRES)


def encode_offer(offer: Offer) -> bytes:
    """The canonical offer body: a map with the keys of ``_OFFER_KEYS`` in that order."""
    return pack(
        {
            "v": OFFER_VERSION,
            "worker": offer.worker,
            "limits": encode_limits(offer.limits),
            "max_input": offer.max_input,
            "slots": offer.slots,
            "free": offer.free,
            "speed": offer.speed,
            "expires": offer.expires,
        }
    )


def sign_offer(offer: Offer, signer: Signer) -> SignedOffer:
    """Sign an offer with the worker's own key (the one it names)."""
    return SignedOffer(offer, *_OFFERS.sign(offer, signer))


def _parse_offer(value: object) -> Offer:
    if isinstance(value, dict) and "v" in value and value["v"] != OFFER_VERSION:
        raise RemoteProtocolError(f"offer version {value['v']!r} is not supported")
    version, worker, limits, *numbers = expect_map(value, _OFFER_KEYS, what="offer")
    expect_int(version, what="offer version", low=OFFER_VERSION, high=OFFER_VERSION)
    # object.__new__ skips __post_init__, whose LocalProtocolError would blame us.
    offer = object.__new__(Offer)
    for name, item in zip(
        _OFFER_FIELDS, (worker, parse_limits(limits, what="offer limits"), *numbers), strict=True
    ):
        object.__setattr__(offer, name, item)
    _check_offer(offer)
    return offer


OFFER_BODY: Final = Codec(
    what="offer",
    encode=encode_offer,
    parse=_parse_offer,
    limits=Limits(
        max_size=_MAX_OFFER_BODY,
        # Keys are its only strings, and those of the limits are shorter.
        max_str_len=max(len(key) for key in _OFFER_KEYS),
        max_bin_len=PUBLIC_KEY_SIZE,
        max_array_len=0,
        max_map_len=len(_OFFER_KEYS),
    ),
)
_OFFERS: Final = SignedKind(
    name="offer",
    role="worker",
    domain=OFFER_DOMAIN,
    body=OFFER_BODY,
    max_size=MAX_OFFER_SIZE,
    signer=lambda offer: offer.worker,
)
offer_signing_message: Final = _OFFERS.signing_message


def decode_offer(data: bytes) -> SignedOffer:
    """Decode a signed offer and check its signature against the worker key it names.

    RemoteProtocolError for malformed bytes, IntegrityError for a bad signature; the
    expiry is not checked.  A requester that knows which worker it asked uses
    :func:`verify_offer` instead.
    """
    return SignedOffer(*_OFFERS.open_trailing(data))


def verify_offer(data: bytes, *, worker: bytes, now: int) -> SignedOffer:
    """Check an offer from ``worker`` (its public key) at unix time ``now``.

    The signature is checked before the body is parsed, so any alteration of the
    bytes, the length included, raises IntegrityError.  An offer past its expiry
    raises OfferExpiredError; one expiring further ahead than a worker may promise
    raises RemoteProtocolError.
    """
    signed = SignedOffer(*_OFFERS.verify_trailing(data, key=worker))
    offer = signed.offer
    _OFFERS.check_signer(offer, worker)
    if offer.expires < now:
        raise OfferExpiredError(f"the offer expired {now - offer.expires} seconds ago")
    if offer.expires > now + MAX_OFFER_LIFETIME + CLOCK_SKEW:
        raise RemoteProtocolError(
            f"the offer expires in {offer.expires - now} seconds, more than the "
            f"{MAX_OFFER_LIFETIME} (+{CLOCK_SKEW} of clock skew) an offer may last"
        )
    return signed
