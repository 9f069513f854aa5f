"""Ed25519 public keys and libp2p peer IDs: pure functions, no key files.

The peer ID is computed here exactly as libp2p does (identity multihash of the
protobuf-encoded public key, base58btc), so the CLI can show it without loading
libp2p.  Spec: https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md

The node's own key pair, which lives in a file, is p2pshare.identity.NodeKey.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pshare.errors import IntegrityError, RemoteProtocolError
from p2pshare.proto.multiformats import b58decode, b58encode

# Protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}, as fixed by the peer-ids spec.
_ED25519_PROTOBUF_PREFIX = b"\x08\x01\x12\x20"
# Identity multihash (code 0x00) of the 36-byte protobuf key.
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


# Ed25519 points of small order (with the sign bit cleared), in canonical and
# non-canonical encodings; list from libsodium's ge25519_has_small_order.  With such a
# public key one signature verifies for every message, so anyone could "sign" as it.
_SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(point)
    for point in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def is_small_order_key(public_key: bytes) -> bool:
    """True for the small-order Ed25519 points, which no one holds a private key for."""
    return public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER_KEYS


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return b58encode(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTOBUF_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a ``12D3KooW...`` peer ID; ValueError for any other ID."""
    try:
        raw = b58decode(peer_id[:64])
    except RemoteProtocolError:
        raise ValueError(f"{peer_id!r} is not a base58 peer ID") from None
    prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTOBUF_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValueError(f"{peer_id!r} is not the peer ID of an Ed25519 key")
    return raw[len(prefix) :]


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise IntegrityError unless ``signature`` is a valid Ed25519 signature of ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        raise IntegrityError("malformed Ed25519 key or signature")
    if is_small_order_key(public_key):
        raise IntegrityError("the key is a small-order Ed25519 point, which has no owner")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature as exc:
        raise IntegrityError("signature does not verify") from exc
