"""Content IDs: CIDv1 strings naming a signed manifest by its BLAKE3 hash.

Layout (docs/protocol.md, "Content ID")::

    "b" + base32lower( varint(1) varint(0x55 raw) varint(0x1e blake3) varint(32) digest )

The codec is ``raw`` because the CID names exactly the bytes of the signed manifest,
which any multiformats tool can check by hashing them; what those bytes mean is
settled by decoding them, not by the codec.  The DHT key is the multihash alone, as
with every provider record of /ipfs/kad/1.0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from p2pshare.proto.errors import MalformedReferenceError
from p2pshare.proto.multiformats import b32decode, b32encode, decode_varint, encode_varint

CID_VERSION = 1
RAW_CODEC = 0x55
BLAKE3_MULTIHASH = 0x1E
SHA2_256_MULTIHASH = 0x12
DIGEST_SIZE = 32
MULTIBASE_BASE32 = "b"
# Multibase base32upper: the same RFC 4648 alphabet in upper case.  Accepted as the
# multibase spec asks, so a CID that went through an upper-casing tool still works;
# p2pshare always writes the lower-case form.
MULTIBASE_BASE32_UPPER = "B"
_MULTIHASH_PREFIX = encode_varint(BLAKE3_MULTIHASH) + encode_varint(DIGEST_SIZE)
_CID_PREFIX = encode_varint(CID_VERSION) + encode_varint(RAW_CODEC) + _MULTIHASH_PREFIX
CID_BYTES = len(_CID_PREFIX) + DIGEST_SIZE
# Far above the 59 characters of a valid CID, low enough that nothing big gets decoded.
_MAX_CID_CHARS = 128
_NOT_A_CID = "this is not a p2pshare content ID"


@dataclass(frozen=True)
class ContentId:
    """The name of one signed manifest: the BLAKE3 digest of its bytes."""

    digest: bytes

    def __post_init__(self) -> None:
        if type(self.digest) is not bytes or len(self.digest) != DIGEST_SIZE:
            raise LocalProtocolError("a content ID holds a 32-byte BLAKE3 digest")

    @classmethod
    def of(cls, signed_manifest: bytes) -> ContentId:
        """The content ID of the bytes of a signed manifest."""
        return cls(blake3.blake3(signed_manifest).digest())

    @property
    def multihash(self) -> bytes:
        """The DHT key: the BLAKE3 multihash (0x1e, 32 bytes) of the signed manifest."""
        return _MULTIHASH_PREFIX + self.digest

    def to_bytes(self) -> bytes:
        """The binary CID, as carried inside tickets and messages."""
        return _CID_PREFIX + self.digest

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentId:
        """Parse a binary CID; anything but a raw BLAKE3 CIDv1 is a RemoteProtocolError."""
        version, pos = decode_varint(data)
        if version != CID_VERSION:
            raise RemoteProtocolError(f"CID version {version} is not supported; expected CIDv1")
        codec, pos = decode_varint(data, pos)
        if codec != RAW_CODEC:
            raise RemoteProtocolError(f"CID codec 0x{codec:x} is not raw (0x55)")
        code, pos = decode_varint(data, pos)
        if code != BLAKE3_MULTIHASH:
            hint = " (sha2-256, as IPFS uses)" if code == SHA2_256_MULTIHASH else ""
            raise RemoteProtocolError(f"CID hash 0x{code:x}{hint} is not BLAKE3 (0x1e)")
        length, pos = decode_varint(data, pos)
        if length != DIGEST_SIZE or len(data) - pos != DIGEST_SIZE:
            raise RemoteProtocolError("CID digest is not 32 bytes long")
        return cls(data[pos:])

    @classmethod
    def parse(cls, text: str) -> ContentId:
        """Parse the text form; the error's ``str()`` is a sentence for the user."""
        if not text:
            raise MalformedReferenceError(f"{_NOT_A_CID}: it is empty")
        if len(text) > _MAX_CID_CHARS:
            raise MalformedReferenceError(f"{_NOT_A_CID}: it is {len(text)} characters long")
        if text.startswith("Qm"):
            raise MalformedReferenceError(
                f"{_NOT_A_CID}: it looks like an IPFS CIDv0; p2pshare content IDs start with 'b'"
            )
        body = text[1:]
        if text.startswith(MULTIBASE_BASE32_UPPER) and body == body.upper():
            body = body.lower()
        elif not text.startswith(MULTIBASE_BASE32):
            raise MalformedReferenceError(
                f"{_NOT_A_CID}: it must start with 'b' (CIDv1 in base32 lower case) "
                "or 'B' (the same in upper case)"
            )
        try:
            return cls.from_bytes(b32decode(body))
        except RemoteProtocolError as exc:
            raise MalformedReferenceError(
                f"{_NOT_A_CID}: {exc}; check that it was copied in full"
            ) from exc

    def __str__(self) -> str:
        return MULTIBASE_BASE32 + b32encode(self.to_bytes())

    def verify(self, signed_manifest: bytes) -> None:
        """Raise IntegrityError unless ``signed_manifest`` is the content this ID names."""
        if blake3.blake3(signed_manifest).digest() != self.digest:
            raise IntegrityError(f"manifest bytes do not match content ID {self}")


def parse_cid(text: str) -> ContentId:
    return ContentId.parse(text)


def format_cid(cid: ContentId) -> str:
    return str(cid)


def multihash_bytes(cid: ContentId) -> bytes:
    """The DHT key under which providers of ``cid`` are announced."""
    return cid.multihash
