"""docs/security.md names the test behind each defence and guarantee: each must exist.

A renamed or deleted test would otherwise leave a promise with nothing behind it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
# `dir/test_x.py::test_name` or `dir/test_x.py` (a whole file), relative to tests/.
TEST_REF = re.compile(r"`((?:[\w]+/)*test_\w+\.py)(?:::(\w+))?")


def _references() -> list[tuple[str, str | None]]:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in TEST_REF.finditer(doc)]


def test_every_test_named_in_security_md_exists() -> None:
    refs = _references()
    assert len(refs) > 100
    missing = []
    for path, name in refs:
        source = ROOT / "tests" / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"def {name}\b", source.read_text(encoding="utf-8")):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_the_never_section_names_a_test_for_every_promise() -> None:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    section = doc.split("## What p2pshare will never do", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    promises = [row for row in rows if not row.startswith("| p2pshare never")]
    assert len(promises) >= 25
    assert all(TEST_REF.search(row) for row in promises)
