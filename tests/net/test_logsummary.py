"""LogSummariser: the first event in full, then at most one summary per interval."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.net.logsummary import LogSummariser, Summary


def test_first_event_is_logged_in_full_and_a_flood_becomes_one_summary_per_interval() -> None:
    summariser = LogSummariser(60)
    assert summariser.record("first", 0.0) == (True, None)
    decisions = [summariser.record(f"event {i}", i * 0.01) for i in range(1, 2000)]
    assert all(d == (False, None) for d in decisions)
    assert summariser.flush(59.9) is None
    assert summariser.flush(60.0) == Summary(1999, 60.0, "event 1999")
    assert summariser.flush(61.0) is None


def test_summary_sentence_names_the_count_the_interval_and_the_last_detail() -> None:
    assert Summary(1999, 60.0, "bad OPEN").sentence("refused") == (
        "refused: 1999 more in the last 60 s (last: bad OPEN)"
    )


def test_an_event_after_a_quiet_interval_is_logged_in_full_again() -> None:
    summariser = LogSummariser(10)
    assert summariser.record("a", 0.0) == (True, None)
    assert summariser.flush(10.0) is None  # nothing was suppressed: the window closes
    assert summariser.record("b", 25.0) == (True, None)


def test_an_event_that_ends_an_interval_carries_the_summary() -> None:
    summariser = LogSummariser(10)
    summariser.record("a", 0.0)
    summariser.record("b", 1.0)
    full, summary = summariser.record("c", 10.5)
    assert not full
    assert summary == Summary(2, 10.5, "c")


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LogSummariser(0)


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=300))
def test_lines_logged_never_exceed_two_per_interval_and_every_event_is_counted(
    gaps: list[float],
) -> None:
    interval = 5.0
    summariser = LogSummariser(interval)
    now, lines, counted = 0.0, [], 0
    for gap in gaps:
        now += gap
        full, summary = summariser.record("x", now)
        if full:
            lines.append(now)
            counted += 1
        if summary is not None:
            lines.append(now)
            counted += summary.count
    final = summariser.flush(now + 2 * interval)
    counted += final.count if final else 0
    assert counted == len(gaps) == summariser.total
    for start in lines:
        assert sum(1 for t in lines if start <= t < start + interval) <= 2
