"""Bitfields: which chunks of a share a peer holds, or a download has verified.

Bit ``i`` lives in byte ``i // 8`` under mask ``0x80 >> (i % 8)`` (most significant bit
first, as BitTorrent does); the bytes are exactly ``ceil(size / 8)`` long and the bits
after ``size`` in the last byte are zero.  One canonical byte string per value means a
bitfield read from a peer or from disk either is exactly what was written or is refused.

The same class travels in HAVE replies (docs/transfer-protocol.md) and persists a
download's verified chunks in the store.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from p2pshare.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.proto.chunks import BytesLike

# Whole bytes are skipped by the C regex engine rather than bit by bit in Python, so
# walking a mostly complete (or mostly empty) bitfield of millions of chunks is fast.
_NOT_FULL = re.compile(rb"[^\xff]")
_NOT_EMPTY = re.compile(rb"[^\x00]")


def _byte_length(size: int) -> int:
    return (size + 7) // 8


class Bitfield:
    """A fixed number of bits, all clear at first; mutable, compared by value."""

    __slots__ = ("_bits", "_count", "_size")

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 0:
            raise LocalProtocolError(f"a bitfield size is a non-negative integer, not {size!r}")
        self._size = size
        self._bits = bytearray(_byte_length(size))
        self._count = 0

    @classmethod
    def full(cls, size: int) -> Bitfield:
        """Every bit set: what a peer holding the whole share announces."""
        field = cls(size)
        field._bits[:] = b"\xff" * len(field._bits)
        if size % 8:
            field._bits[-1] = (0xFF00 >> (size % 8)) & 0xFF
        field._count = size
        return field

    @classmethod
    def from_bytes(cls, data: BytesLike, size: int) -> Bitfield:
        """Parse untrusted bytes; RemoteProtocolError unless they are a bitfield of ``size``.

        The length is checked before anything is copied.
        """
        if type(size) is int and size >= 0 and len(data) != _byte_length(size):
            raise RemoteProtocolError(
                f"a bitfield of {size} bits has {_byte_length(size)} bytes, not {len(data)}"
            )
        field = cls(size)
        field._bits[:] = data
        if size % 8 and field._bits[-1] & (0xFF >> (size % 8)):
            raise RemoteProtocolError(f"bits after the last of {size} are set in a bitfield")
        field._count = int.from_bytes(field._bits, "big").bit_count()
        return field

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        other = Bitfield(0)
        other._size, other._bits, other._count = self._size, bytearray(self._bits), self._count
        return other

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    def count(self) -> int:
        """How many bits are set (kept up to date, so this costs nothing)."""
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self._size

    def _locate(self, index: int) -> tuple[int, int]:
        if type(index) is not int or not 0 <= index < self._size:
            raise LocalProtocolError(f"bit {index!r} is outside a bitfield of {self._size}")
        return index >> 3, 0x80 >> (index & 7)

    def __getitem__(self, index: int) -> bool:
        byte, mask = self._locate(index)
        return bool(self._bits[byte] & mask)

    def set(self, index: int) -> None:
        byte, mask = self._locate(index)
        if not self._bits[byte] & mask:
            self._bits[byte] |= mask
            self._count += 1

    def clear(self, index: int) -> None:
        byte, mask = self._locate(index)
        if self._bits[byte] & mask:
            self._bits[byte] &= ~mask & 0xFF
            self._count -= 1

    def slice(self, first: int, count: int) -> Bitfield:
        """Bits ``first`` .. ``first + count - 1`` as a bitfield of ``count`` (a HAVE range).

        Shifted as one integer rather than bit by bit: a range may hold millions of bits.
        """
        if type(first) is not int or type(count) is not int or first < 0 or count < 0:
            raise LocalProtocolError(f"bits {first!r} + {count!r} are not a range")
        if first + count > self._size:
            raise LocalProtocolError(
                f"bits {first} to {first + count - 1} are outside a bitfield of {self._size}"
            )
        start, end = first >> 3, _byte_length(first + count)
        window = int.from_bytes(self._bits[start:end], "big")
        # Drop the bits after the range, keep ``count`` bits, then pad the last byte.
        window >>= (end - start) * 8 - (first - start * 8) - count
        window &= (1 << count) - 1
        window <<= _byte_length(count) * 8 - count
        return Bitfield.from_bytes(window.to_bytes(_byte_length(count), "big"), count)

    def difference(self, other: Bitfield) -> Bitfield:
        """The bits set here and clear in ``other``, a bitfield of the same size."""
        if other._size != self._size:
            raise LocalProtocolError(
                f"bitfields of {self._size} and {other._size} bits cannot be compared"
            )
        mine, theirs = int.from_bytes(self._bits, "big"), int.from_bytes(other._bits, "big")
        return Bitfield.from_bytes((mine & ~theirs).to_bytes(len(self._bits), "big"), self._size)

    def iter_set(self, start: int = 0) -> Iterator[int]:
        """Indices of set bits from ``start`` on, ascending."""
        return self._scan(_NOT_EMPTY, start, want=True)

    def iter_missing(self, start: int = 0) -> Iterator[int]:
        """Indices of clear bits from ``start`` on, ascending: the chunks still to fetch."""
        return self._scan(_NOT_FULL, start, want=False)

    def _scan(self, interesting: re.Pattern[bytes], start: int, *, want: bool) -> Iterator[int]:
        if start < 0:
            raise LocalProtocolError(f"cannot scan a bitfield from {start}")
        # Iterating over a snapshot lets the caller set bits while walking the field.
        bits = bytes(self._bits)
        for match in interesting.finditer(bits, start >> 3):
            byte_index = match.start()
            value = bits[byte_index]
            base = byte_index << 3
            for offset in range(8):
                index = base + offset
                if index < start:
                    continue
                if index >= self._size:
                    return
                if bool(value & (0x80 >> offset)) is want:
                    yield index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._size == other._size and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]  # mutable, so not hashable

    def __repr__(self) -> str:
        return f"Bitfield(size={self._size}, set={self._count})"
