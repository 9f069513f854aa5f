"""What integration tests share: a CLI call that must succeed, and a small network."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, start_all

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def cli_json(home: Home, *args: str, timeout: float = 120) -> Any:
    """The ``--json`` document of one command that must succeed."""
    result = run_cli(home, *args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def bootstrapped(root: Path, count: int) -> Iterator[list[DaemonProcess]]:
    """``count`` daemons under ``root``; node0 is the bootstrap node of the others."""
    homes = [Home(root / f"n{i}") for i in range(count)]
    init_home(homes[0])
    with ExitStack() as stack:
        boot = stack.enter_context(DaemonProcess(homes[0]))
        boot.start()
        others = []
        for home in homes[1:]:
            init_home(home, bootstrap=(boot.info["addrs"][0],))
            others.append(stack.enter_context(DaemonProcess(home)))
        start_all(others)
        yield [boot, *others]
