"""The multiformats pieces p2pshare needs: unsigned varints, base58btc, base32.

Written here rather than imported so the CLI can compute peer IDs and content
IDs without loading libp2p (whose import costs over a second).
Specs: https://github.com/multiformats/unsigned-varint,
https://github.com/multiformats/multibase.
"""

from __future__ import annotations

import base64

from p2pshare.errors import RemoteProtocolError

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
# A varint of more than 9 bytes cannot be a valid multiformats varint (spec: max 63 bits).
_MAX_VARINT_BYTES = 9


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned LEB128 varint."""
    if value < 0 or value >= 1 << 63:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a minimal varint at ``offset``; return (value, offset after it)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        pos = offset + i
        if pos >= len(data):
            raise RemoteProtocolError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise RemoteProtocolError("varint is not minimally encoded")
            return value, pos + 1
    raise RemoteProtocolError("varint longer than 9 bytes")


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase ``z`` without the prefix)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    chars = []
    while num:
        num, rem = divmod(num, 58)
        chars.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; a character outside the alphabet is a protocol error."""
    num = 0
    for char in text:
        digit = _B58_INDEX.get(char)
        if digit is None:
            raise RemoteProtocolError(f"invalid base58 character {char!r}")
        num = num * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding (multibase ``b`` without the prefix)."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    """Inverse of :func:`b32encode`; rejects upper case, padding and stray characters."""
    if text != text.lower() or "=" in text:
        raise RemoteProtocolError("base32 text must be lower case without padding")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        decoded = base64.b32decode(padded)
    except ValueError as exc:
        raise RemoteProtocolError("invalid base32 text") from exc
    if b32encode(decoded) != text:
        raise RemoteProtocolError("non-canonical base32 text")
    return decoded
