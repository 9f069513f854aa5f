"""Chunk plan and chunk hashing."""

from __future__ import annotations

import itertools
import random

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError
from p2pshare.proto.chunks import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    ChunkHasher,
    chunk_count,
    chunk_range,
    hash_chunk,
    hash_chunks,
    is_valid_chunk_size,
    verify_chunk,
)

CS = MIN_CHUNK_SIZE


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_default_chunk_size_is_one_mebibyte() -> None:
    assert DEFAULT_CHUNK_SIZE == 1 << 20
    assert is_valid_chunk_size(DEFAULT_CHUNK_SIZE)


@pytest.mark.parametrize("size", [1 << n for n in range(14, 25)])
def test_powers_of_two_from_16_kib_to_16_mib_are_valid(size: int) -> None:
    assert is_valid_chunk_size(size)


@pytest.mark.parametrize(
    "size", [0, 1, MIN_CHUNK_SIZE // 2, MIN_CHUNK_SIZE + 1, 3 << 20, MAX_CHUNK_SIZE * 2, -CS]
)
def test_other_chunk_sizes_are_invalid(size: int) -> None:
    assert not is_valid_chunk_size(size)
    with pytest.raises(LocalProtocolError):
        ChunkHasher(size)


@pytest.mark.parametrize(
    ("size", "count"), [(0, 0), (1, 1), (CS - 1, 1), (CS, 1), (CS + 1, 2), (10 * CS, 10)]
)
def test_chunk_count(size: int, count: int) -> None:
    assert chunk_count(size, CS) == count


@given(st.integers(0, 20 * CS))
def test_chunk_ranges_tile_the_file(size: int) -> None:
    count = chunk_count(size, CS)
    ranges = [chunk_range(size, index, CS) for index in range(count)]
    assert sum(length for _offset, length in ranges) == size
    position = 0
    for index, (offset, length) in enumerate(ranges):
        assert offset == position
        assert 0 < length <= CS
        assert length == CS or index == count - 1
        position += length


@pytest.mark.parametrize(("size", "index"), [(0, 0), (CS, 1), (CS, -1)])
def test_chunk_range_outside_the_file(size: int, index: int) -> None:
    with pytest.raises(LocalProtocolError):
        chunk_range(size, index, CS)


def test_chunk_hash_is_plain_blake3() -> None:
    # Published BLAKE3 test vector for the empty input.
    empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert hash_chunk(b"").hex() == empty
    assert hash_chunk(b"abc") == blake3.blake3(b"abc").digest()
    assert len(hash_chunk(b"abc")) == 32


def test_empty_file_has_no_chunk_hashes() -> None:
    assert hash_chunks(b"", CS) == []


@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 4 * CS + 100),
    cuts=st.lists(st.integers(0, 4 * CS + 100), max_size=12),
)
def test_any_split_gives_the_same_hashes(seed: int, size: int, cuts: list[int]) -> None:
    data = _data(seed, size)
    whole = [hash_chunk(data[offset : offset + CS]) for offset in range(0, size, CS)]
    bounds = sorted({0, size, *(cut for cut in cuts if cut <= size)})
    hasher = ChunkHasher(CS)
    streamed: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        streamed += hasher.update(memoryview(data)[start:end])
    streamed += hasher.finish()
    assert streamed == whole == hash_chunks(data, CS)
    assert hasher.bytes_hashed == size


def test_update_reports_each_chunk_as_soon_as_it_is_complete() -> None:
    hasher = ChunkHasher(CS)
    assert hasher.update(bytes(CS - 1)) == []
    assert hasher.update(bytearray(2)) == [hash_chunk(bytes(CS))]
    assert hasher.finish() == [hash_chunk(bytes(1))]


def test_hasher_cannot_be_used_after_finish() -> None:
    hasher = ChunkHasher(CS)
    hasher.finish()
    with pytest.raises(LocalProtocolError):
        hasher.update(b"x")
    with pytest.raises(LocalProtocolError):
        hasher.finish()


@given(seed=st.integers(0, 2**32), size=st.integers(1, CS), bit=st.integers(0, 8 * CS - 1))
def test_any_flipped_bit_in_a_chunk_is_caught(seed: int, size: int, bit: int) -> None:
    data = bytearray(_data(seed, size))
    expected = hash_chunk(data)
    verify_chunk(expected, data)
    data[(bit // 8) % size] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        verify_chunk(expected, data)


def test_truncated_chunk_is_caught() -> None:
    data = _data(1, CS)
    with pytest.raises(IntegrityError):
        verify_chunk(hash_chunk(data), data[:-1])
