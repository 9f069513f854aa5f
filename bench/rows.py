"""The common shape of a benchmark figure, so `bench/run.py` can print every benchmark in
one table: figure | value | same-run baseline | target | met?

Each benchmark module exposes ``measure(quick: bool) -> list[Row]`` and prints its own
rows with :func:`print_table` when run alone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One figure. ``met`` is None when the figure has no target (shown for context)."""

    figure: str
    value: str
    baseline: str = "-"
    target: str = "-"
    met: bool | None = None


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**not met**")


def table(rows: list[Row]) -> str:
    """A Markdown table: readable in a terminal and pasted as is into docs/benchmarks.md."""
    lines = [
        "| figure | value | same-run baseline | target | met? |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.figure} | {r.value} | {r.baseline} | {r.target} | {verdict(r.met)} |" for r in rows
    ]
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    print(table(rows), flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("inf")
