from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.bitfield import Bitfield


@st.composite
def bitfields(draw: st.DrawFn, max_size: int = 300) -> tuple[Bitfield, set[int]]:
    """A bitfield and the model set of its indices."""
    size = draw(st.integers(0, max_size))
    indices = draw(st.sets(st.integers(0, size - 1))) if size else set()
    field = Bitfield(size)
    for index in indices:
        field.set(index)
    return field, indices


@given(bitfields())
def test_round_trip_and_model(case: tuple[Bitfield, set[int]]) -> None:
    field, indices = case
    data = field.to_bytes()
    assert len(data) == (field.size + 7) // 8
    again = Bitfield.from_bytes(data, field.size)
    assert again == field
    assert again.count() == len(indices) == field.count()
    assert list(field.iter_set()) == sorted(indices)
    assert list(field.iter_missing()) == sorted(set(range(field.size)) - indices)
    assert all(field[i] == (i in indices) for i in range(field.size))
    assert field.complete == (len(indices) == field.size)


@given(bitfields(), st.integers(0, 310))
def test_scans_start_anywhere(case: tuple[Bitfield, set[int]], start: int) -> None:
    field, indices = case
    assert list(field.iter_set(start)) == sorted(i for i in indices if i >= start)
    assert list(field.iter_missing(start)) == [
        i for i in range(start, field.size) if i not in indices
    ]


@given(bitfields(), st.lists(st.tuples(st.booleans(), st.integers(0, 299)), max_size=40))
def test_set_and_clear_follow_the_model(
    case: tuple[Bitfield, set[int]], ops: list[tuple[bool, int]]
) -> None:
    field, indices = case
    for add, index in ops:
        if index >= field.size:
            continue
        if add:
            field.set(index)
            indices.add(index)
        else:
            field.clear(index)
            indices.discard(index)
    assert field.count() == len(indices)
    assert list(field.iter_set()) == sorted(indices)
    assert Bitfield.from_bytes(field.to_bytes(), field.size) == field


@given(st.integers(0, 100))
def test_full(size: int) -> None:
    field = Bitfield.full(size)
    assert field.complete
    assert field.count() == size
    assert list(field.iter_missing()) == []
    assert Bitfield.from_bytes(field.to_bytes(), size) == field


@given(st.integers(1, 100), st.data())
def test_set_trailing_bits_are_refused(size: int, data: st.DataObject) -> None:
    raw = bytearray(Bitfield.full(size).to_bytes())
    spare = 8 * len(raw) - size
    if spare == 0:
        return
    raw[-1] |= 1 << data.draw(st.integers(0, spare - 1))
    with pytest.raises(RemoteProtocolError):
        Bitfield.from_bytes(bytes(raw), size)


@pytest.mark.parametrize(("size", "length"), [(0, 1), (1, 0), (8, 2), (9, 1), (9, 3)])
def test_wrong_length_is_refused(size: int, length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        Bitfield.from_bytes(bytes(length), size)


def test_msb_first_layout() -> None:
    field = Bitfield(10)
    field.set(0)
    field.set(9)
    assert field.to_bytes() == b"\x80\x40"


def test_out_of_range_is_a_caller_bug() -> None:
    field = Bitfield(3)
    for bad in (-1, 3):
        with pytest.raises(LocalProtocolError):
            field.set(bad)
        with pytest.raises(LocalProtocolError):
            _ = field[bad]
    with pytest.raises(LocalProtocolError):
        Bitfield(-1)


def test_copy_is_independent_and_scans_tolerate_mutation() -> None:
    field = Bitfield(20)
    other = field.copy()
    other.set(3)
    assert not field[3]
    for index in field.iter_missing():
        field.set(index)
    assert field.complete


@given(bitfields(), st.data())
def test_slice_is_the_range_as_its_own_bitfield(
    case: tuple[Bitfield, set[int]], data: st.DataObject
) -> None:
    field, indices = case
    first = data.draw(st.integers(0, field.size))
    count = data.draw(st.integers(0, field.size - first))
    part = field.slice(first, count)
    assert part.size == count
    assert set(part.iter_set()) == {i - first for i in indices if first <= i < first + count}
    assert Bitfield.from_bytes(part.to_bytes(), count) == part


def test_slice_out_of_range_is_a_caller_bug() -> None:
    field = Bitfield.full(10)
    for first, count in [(0, 11), (5, 6), (-1, 2), (11, 0)]:
        with pytest.raises(LocalProtocolError):
            field.slice(first, count)


@given(bitfields(), st.data())
def test_difference_is_set_difference(case: tuple[Bitfield, set[int]], data: st.DataObject) -> None:
    field, indices = case
    others = data.draw(st.sets(st.integers(0, field.size - 1))) if field.size else set()
    other = Bitfield(field.size)
    for index in others:
        other.set(index)
    assert set(field.difference(other).iter_set()) == indices - others
    with pytest.raises(LocalProtocolError):
        field.difference(Bitfield(field.size + 1))
