"""Fuzz tests: the ``fuzz`` marker, and no per-test timeout in the long run (see harness.py)."""

from __future__ import annotations

import pytest

from tests.fuzz.harness import FUZZING


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: decoder fuzzing; P2PSHARE_FUZZ=1 runs 100 000 examples per decoder"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if FUZZING:
        for item in items:
            if item.get_closest_marker("fuzz") is not None:
                item.add_marker(pytest.mark.timeout(0))
