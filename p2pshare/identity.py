"""Node identity: one Ed25519 key per node, also the libp2p host key.

The peer ID is computed here exactly as libp2p does (identity multihash of the
protobuf-encoded public key, base58btc), so the CLI can show it without loading
libp2p.  Spec: https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2pshare.errors import ConfigError, IntegrityError, RemoteProtocolError
from p2pshare.proto.multiformats import b58decode, b58encode

if TYPE_CHECKING:
    from pathlib import Path

# Protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}, as fixed by the peer-ids spec.
_ED25519_PROTOBUF_PREFIX = b"\x08\x01\x12\x20"
# Identity multihash (code 0x00) of the 36-byte protobuf key.
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"
KEY_FILE_MODE = 0o600


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


@dataclass(frozen=True)
class NodeKey:
    """A node's Ed25519 key pair."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """Build a key from its 32-byte seed (used for test vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 (never readable by others)."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> NodeKey:
        """Read a key written by :meth:`save`; refuse one that others can read."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"no node key at {path}; create one with: p2pshare init") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"node key {path} can be read or changed by other users "
                f"(mode {stat.S_IMODE(mode):o}); fix it with: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"node key {path} is not a valid PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"node key {path} is not an Ed25519 key")
        return cls(key)
