"""The size ceiling of docs/architecture.md: no module over 600 lines, no function over 60.

A module or function past it has usually grown a second job; splitting it is cheaper
while the two jobs are still easy to tell apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted([*(ROOT / "p2pshare").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])


def oversized(path: Path, source: str) -> list[str]:
    """What in ``source`` is past the ceiling; a function counts from ``def`` to its end."""
    where = path.relative_to(ROOT)
    found = []
    if (lines := len(source.splitlines())) > MAX_MODULE_LINES:
        found.append(f"{where}: {lines} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno}: {node.name} has {length} lines")
    return found


def test_no_module_or_function_is_past_the_ceiling() -> None:
    assert [item for path in _sources() for item in oversized(path, path.read_text())] == []


def test_the_check_sees_a_long_module_and_a_long_function() -> None:
    path = ROOT / "p2pshare" / "example.py"
    long_function = "def f() -> None:\n" + "    pass\n" * 60
    assert oversized(path, long_function) == ["p2pshare/example.py:1: f has 61 lines"]
    assert oversized(path, "x = 1\n" * 601) == ["p2pshare/example.py: 601 lines"]
