"""The send-buffer pool: bounded, reused, and never one buffer lent to two users at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.net.bufferpool import BufferPool

# True: acquire one more; an int: release the n-th buffer held (modulo how many are held).
_STEPS = st.lists(st.one_of(st.just(True), st.integers(min_value=0, max_value=50)), max_size=200)


@given(steps=_STEPS, keep=st.integers(min_value=0, max_value=4))
def test_no_buffer_is_lent_twice_and_the_idle_ones_stay_bounded(
    steps: list[bool | int], keep: int
) -> None:
    pool = BufferPool(64, keep=keep)
    held: list[bytearray] = []
    for step in steps:
        if step is True or not held:
            idle_before = pool.idle
            buffer = pool.acquire()
            assert len(buffer) == 64
            assert all(buffer is not other for other in held)
            # An idle buffer is reused before a new one is made.
            assert pool.idle == max(idle_before - 1, 0)
            held.append(buffer)
        else:
            pool.release(held.pop(step % len(held)))
        assert pool.lent == len(held)
        assert pool.idle <= keep


def test_a_released_buffer_is_the_next_one_lent() -> None:
    pool = BufferPool(16, keep=1)
    first = pool.acquire()
    pool.release(first)
    assert pool.acquire() is first


def test_releasing_twice_or_a_foreign_buffer_is_refused() -> None:
    pool = BufferPool(16, keep=2)
    buffer = pool.acquire()
    pool.release(buffer)
    with pytest.raises(ValueError, match="not lent"):
        pool.release(buffer)
    with pytest.raises(ValueError, match="not lent"):
        pool.release(bytearray(16))
    assert pool.idle == 1
