"""Assembling WAT text: the examples build, and bad text is explained."""

from __future__ import annotations

import pytest

from p2pshare.compute.examples import wat_error, wat_to_wasm


def test_bad_wat_names_line_and_column() -> None:
    with pytest.raises(ValueError, match=r"^line 3, column 5: unknown operator"):
        wat_to_wasm("(module\n  (func $f\n    i32.bogus\n  )\n)\n")


def test_a_wat_error_without_a_position_is_kept_as_it_is() -> None:
    assert wat_error("something odd") == "something odd"
    assert wat_error("") == "cannot be assembled"
