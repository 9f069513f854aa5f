"""Canonical msgpack: exactly one byte string per value, and decoders that accept only it.

Signatures and content IDs cover bytes, so two encodings of one value would give one
share two names, or let a peer re-encode a signed manifest without breaking it.
Every decoder therefore rebuilds the value, encodes it again and requires the very
same bytes.  msgpack-python already writes the shortest form of every integer,
string, binary and container header; what remains canonical is up to the caller:
map keys in a fixed order, no floats, no extension types, lists sorted where order
carries no meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import msgpack

from p2pshare.errors import RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

# Far deeper than any p2pshare message (manifests nest four levels).
MAX_DEPTH = 16


def pack(value: object) -> bytes:
    """Encode with msgpack's ``bin`` type for bytes, so bytes and text never alias."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack(
    data: bytes,
    *,
    what: str,
    max_size: int,
    max_str_len: int,
    max_bin_len: int,
    max_array_len: int,
    max_map_len: int,
) -> object:
    """Decode untrusted msgpack, refusing before allocating anything beyond the limits."""
    if len(data) > max_size:
        raise RemoteProtocolError(f"{what} has {len(data)} bytes, more than the limit {max_size}")
    # msgpack allocates a container for the count its header declares; each element
    # takes at least one byte, so no honest count exceeds the input's length.
    try:
        value: object = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_str_len,
            max_bin_len=max_bin_len,
            max_array_len=min(max_array_len, len(data)),
            max_map_len=min(max_map_len, len(data) // 2),
            max_ext_len=0,
        )
    # msgpack signals every malformation through ValueError (ExtraData, FormatError,
    # StackError, UnicodeDecodeError, limit overruns) or its own UnpackException;
    # TypeError covers unhashable map keys.
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"{what} is not valid msgpack ({exc})") from exc
    if nesting_exceeds(value, MAX_DEPTH):
        raise RemoteProtocolError(f"{what} nests more than {MAX_DEPTH} levels deep")
    return value


def nesting_exceeds(value: object, max_depth: int) -> bool:
    """True if lists and maps in ``value`` nest deeper than ``max_depth``.

    msgpack accepts about a thousand levels, where repr(), comparisons and re-encoding
    hit Python's recursion limit: an error message quoting a peer's value would raise
    RecursionError instead of a protocol error.  Walked without recursion.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            if depth > max_depth:
                return True
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return False


def decode_canonical(
    data: bytes,
    *,
    what: str,
    value: object,
    parse: Callable[[object], T],
    encode: Callable[[T], bytes],
) -> T:
    """Parse an unpacked ``value`` of ``data`` and require that it re-encodes to ``data``."""
    result = parse(value)
    if encode(result) != data:
        raise RemoteProtocolError(f"{what} is not canonically encoded")
    return result


@dataclass(frozen=True)
class Limits:
    """What :func:`unpack` allows one value of a kind before allocating it."""

    max_size: int
    max_str_len: int
    max_bin_len: int
    max_array_len: int
    max_map_len: int


@dataclass(frozen=True)
class Codec(Generic[T]):
    """One canonical value kind: its encoder, its parser and its unpack limits.

    ``parse`` raises RemoteProtocolError unless the unpacked value is valid;
    :meth:`decode` adds the size limits and the canonical re-encoding check.
    """

    what: str
    encode: Callable[[T], bytes]
    parse: Callable[[object], T]
    limits: Limits

    def decode(self, data: bytes) -> T:
        """Decode untrusted bytes; RemoteProtocolError unless valid and canonical."""
        limits = self.limits
        value = unpack(
            data,
            what=self.what,
            max_size=limits.max_size,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
        )
        return decode_canonical(
            data, what=self.what, value=value, parse=self.parse, encode=self.encode
        )


def expect_map(value: object, keys: tuple[str, ...], *, what: str) -> list[object]:
    """The values of a map that has exactly ``keys``, in that order."""
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what} must be a map")
    if list(value) != list(keys):
        raise RemoteProtocolError(f"{what} must have the keys {', '.join(keys)} in that order")
    return [value[key] for key in keys]


def expect_list(
    value: object, *, what: str, max_len: int, length: int | None = None
) -> list[object]:
    if not isinstance(value, list):
        raise RemoteProtocolError(f"{what} must be an array")
    if length is not None and len(value) != length:
        raise RemoteProtocolError(f"{what} must have {length} elements, not {len(value)}")
    if len(value) > max_len:
        raise RemoteProtocolError(f"{what} has {len(value)} elements, more than {max_len}")
    return value


def expect_int(value: object, *, what: str, low: int, high: int) -> int:
    # bool is an int subclass and msgpack has a distinct encoding for it; a bool where
    # an int belongs must not slip through and re-encode identically.
    if type(value) is not int:
        raise RemoteProtocolError(f"{what} must be an integer")
    if not low <= value <= high:
        raise RemoteProtocolError(f"{what} must be between {low} and {high}, not {value}")
    return value


def expect_bytes(value: object, *, what: str, length: int | None = None, max_len: int) -> bytes:
    if type(value) is not bytes:
        raise RemoteProtocolError(f"{what} must be binary")
    if length is not None and len(value) != length:
        raise RemoteProtocolError(f"{what} must have {length} bytes, not {len(value)}")
    if len(value) > max_len:
        raise RemoteProtocolError(f"{what} has {len(value)} bytes, more than {max_len}")
    return value


def expect_str(value: object, *, what: str) -> str:
    if type(value) is not str:
        raise RemoteProtocolError(f"{what} must be a string")
    return value
