"""Shared test set-up: hypothesis profiles, heavy variants, node homes and daemons.

Hypothesis profiles, chosen with P2PSHARE_HYPOTHESIS:
* ``quick`` (default) -- enough examples to catch regressions in CI time;
* ``thorough`` -- many more examples, for a deliberate long run.

Tests marked ``heavy`` (bigger files, longer runs) are skipped unless
``P2PSHARE_HEAVY=1``, so the default run stays within its time budget.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Iterator

settings.register_profile("quick", max_examples=60, deadline=None)
settings.register_profile(
    "thorough",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("P2PSHARE_HYPOTHESIS", "quick"))
HEAVY = os.environ.get("P2PSHARE_HEAVY") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if HEAVY:
        return
    skip = pytest.mark.skip(reason="heavy variant; set P2PSHARE_HEAVY=1 to run it")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths are capped at 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="p2ps-") as name:
        yield Path(name)


@pytest.fixture
def home(short_tmp: Path) -> Home:
    """An uninitialised node home."""
    return Home(short_tmp / "home")


@pytest.fixture
def daemon(home: Home) -> Iterator[DaemonProcess]:
    """A running daemon in a fresh home listening on 127.0.0.1."""
    init_home(home)
    with DaemonProcess(home) as process:
        process.start()
        yield process
