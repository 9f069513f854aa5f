"""Printing results: one JSON document with --json, short lines for people otherwise."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable


def show(result: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(human(result))


def kv_lines(pairs: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in pairs)


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def count(number: int, noun: str) -> str:
    """``1 file``, ``2 files``: ``noun`` is singular and takes an ``s``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def human_rate(size: int, seconds: float) -> str:
    """A transfer rate in the units of :func:`human_size`, so small files do not show 0.0."""
    if seconds <= 0:
        return "instantly"
    return f"{human_size(round(size / seconds))}/s"
