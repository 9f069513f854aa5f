"""The sliding-window rate behind the live transfer rates (status, peers, top)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.rates import RateWindow

WINDOW = 10.0
BUCKETS = 10
WIDTH = WINDOW / BUCKETS

amounts = st.lists(
    st.tuples(st.floats(0, 1e6, allow_nan=False), st.integers(0, 1 << 40)), max_size=50
)


@given(amounts)
def test_rate_counts_every_amount_of_the_last_window_and_none_older(
    events: list[tuple[float, int]],
) -> None:
    window = RateWindow(WINDOW, BUCKETS)
    events = sorted(events)
    for when, amount in events:
        window.add(when, amount)
    now = events[-1][0] if events else 0.0
    recent = sum(a for t, a in events if t > now - WINDOW + WIDTH)
    possible = sum(a for t, a in events if t > now - WINDOW - WIDTH)
    assert recent <= window.rate(now) * WINDOW <= possible


@given(amounts)
def test_rate_falls_to_zero_once_a_window_passes_without_traffic(
    events: list[tuple[float, int]],
) -> None:
    window = RateWindow(WINDOW, BUCKETS)
    for when, amount in sorted(events):
        window.add(when, amount)
    last = max((t for t, _ in events), default=0.0)
    assert window.rate(last + WINDOW + WIDTH) == 0


@given(amounts)
def test_rate_window_memory_stays_bounded_by_its_buckets(
    events: list[tuple[float, int]],
) -> None:
    window = RateWindow(WINDOW, BUCKETS)
    for when, amount in sorted(events):
        window.add(when, amount)
        assert len(window._counts) <= BUCKETS


def test_an_amount_counted_late_by_a_racing_thread_is_not_lost() -> None:
    window = RateWindow(WINDOW, BUCKETS)
    window.add(5.0, 100)
    window.add(4.0, 50)
    assert window.rate(5.0) * WINDOW == 150


def test_steady_traffic_reads_as_its_rate() -> None:
    window = RateWindow(WINDOW, BUCKETS)
    for tick in range(100):
        window.add(tick * 0.5, 1000)
    assert window.rate(49.5) == pytest.approx(2000, rel=0.1)


@pytest.mark.parametrize(("seconds", "buckets"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_rate_window_refuses_a_window_that_measures_nothing(seconds: float, buckets: int) -> None:
    with pytest.raises(ValueError, match="positive window"):
        RateWindow(seconds, buckets)
