"""``p2pshare demo``: several real daemons on loopback, in temporary homes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Callable

NODES = 3


def run_demo(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start three daemons, query each over its control socket, stop them, clean up."""
    say = progress or (lambda _msg: None)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="p2pshare-demo-"))
    nodes: list[DaemonProcess] = []
    report: dict[str, Any] = {"nodes": []}
    try:
        with contextlib.ExitStack() as stack:
            for index in range(NODES):
                home = Home(root / f"node{index}")
                init_home(home)
                daemon = stack.enter_context(DaemonProcess(home))
                t0 = time.monotonic()
                info = daemon.start()
                started = time.monotonic() - t0
                nodes.append(daemon)
                say(f"node{index}: started in {started:.2f} s as {info['peer_id']}")
                say(f"        listening on {', '.join(info['addrs'])}")
                status = daemon.call("status")
                report["nodes"].append(
                    {
                        "name": f"node{index}",
                        "peer_id": info["peer_id"],
                        "addrs": info["addrs"],
                        "start_s": round(started, 3),
                        "version": status["version"],
                    }
                )
            t0 = time.monotonic()
            for daemon in nodes:
                daemon.stop()
            report["stop_s"] = round(time.monotonic() - t0, 3)
            say(f"all {NODES} daemons stopped cleanly in {report['stop_s']:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - began, 3)
    return report
