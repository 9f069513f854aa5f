"""A compute worker lives exactly as long as the daemon process that started it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from typing import IO, TYPE_CHECKING

import msgpack

from p2pshare.proto.framing import FrameDecoder

if TYPE_CHECKING:
    from pathlib import Path

# Generous: a worker imports wasmtime and runs a warm-up job before it is ready.
DEADLINE = 60.0


def _worker_command(work_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-I",
        "-m",
        "p2pshare.compute.worker",
        "--max-memory",
        str(64 * 1024**2),
        "--max-output",
        str(1024**2),
        "--work-dir",
        os.fspath(work_dir),
    ]


def _ready_pid(stdout: IO[bytes]) -> int:
    """Read the worker's READY message: by then it has set up its death-with-parent."""
    decoder = FrameDecoder(1024**2)
    while (frame := decoder.next_frame()) is None:
        data = os.read(stdout.fileno(), 4096)
        assert data, "the worker exited before it was ready"
        decoder.feed(data)
    message = msgpack.unpackb(frame)
    assert message["t"] == "ready"
    pid: int = message["pid"]
    return pid


def _exits_within(pid: int, seconds: float) -> bool:
    pidfd = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([pidfd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(pidfd)


def test_a_worker_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    # trio starts processes from its thread cache, whose threads end after 10 idle
    # seconds; a worker tied to that thread (PR_SET_PDEATHSIG) was killed with it.
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> None:
        process = subprocess.Popen(
            _worker_command(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        started.append(process)
        assert process.stdout is not None
        _ready_pid(process.stdout)

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join(DEADLINE)
    (process,) = started
    with process:
        assert process.stdin is not None
        process.stdin.close()  # the worker's normal end: its stdin closes
        assert process.wait(DEADLINE) == 0, "the worker died with the thread that started it"


def test_a_worker_dies_with_the_daemon_even_while_its_input_stays_open(tmp_path: Path) -> None:
    # The worker's stdin stays open (this test holds it), so only the death of its
    # parent process can end it: a daemon killed with SIGKILL leaves no worker behind.
    parent_code = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(600)"
    with subprocess.Popen(
        [sys.executable, "-c", parent_code, *_worker_command(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as parent:
        assert parent.stdout is not None
        worker = _ready_pid(parent.stdout)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(DEADLINE)
        assert _exits_within(worker, DEADLINE), "the worker outlived its daemon"
