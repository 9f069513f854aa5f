"""pyproject lists packages by hand (cli/ installs as p2pshare_cli): none may be missing."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "p2pshare").rglob("__init__.py")
    } | {"p2pshare_cli"}
    assert found == listed
