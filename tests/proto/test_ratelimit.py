from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.ratelimit import PerKeyBuckets, TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert bucket.delay_for(1) == pytest.approx(0.5)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float]) -> None:
    bucket = TokenBucket(rate=5, burst=10)
    times = sorted(times)
    allowed = sum(bucket.take(t) for t in times)
    span = times[-1] - times[0] if times else 0
    assert allowed <= 10 + 5 * span + 1e-9


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)


def test_per_key_buckets_are_independent_and_bounded() -> None:
    buckets = PerKeyBuckets(rate=1, burst=1, max_keys=2)
    assert buckets.take("a", 0.0)
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    assert buckets.take("c", 5.0)
    assert not buckets.take("c", 5.0)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=1)
