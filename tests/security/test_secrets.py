"""Local other users: no secret on a command line or in an environment.

Any user can read ``/proc/<pid>/cmdline`` of every process; the node key and data
channel keys must therefore never be passed as arguments, to the daemon or to the
compute workers it starts.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from p2pshare.identity import NodeKey
from p2pshare.proto.multiformats import b58encode

if TYPE_CHECKING:
    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration

PROC = Path("/proc")
WORKER_FLAGS = {"--max-memory", "--max-output", "--nice", "--work-dir"}


def _children(pid: int) -> list[int]:
    found = []
    for stat_file in PROC.glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces: fields follow the last ")".
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def _descendants(pid: int) -> list[int]:
    return [child for c in _children(pid) for child in (c, *_descendants(c))]


def _secret_forms(key: NodeKey, key_file: Path) -> list[bytes]:
    """The node key as it could be written out: raw, hex, base64, base58, PEM."""
    seed = key.seed
    pem_lines = [
        line for line in key_file.read_bytes().splitlines() if not line.startswith(b"-----")
    ]
    return [
        seed,
        seed.hex().encode(),
        seed.hex().upper().encode(),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
        b58encode(seed).encode(),
        *pem_lines,
    ]


def _leaks(pid: int, secrets: list[bytes]) -> list[str]:
    """Where in the argv or environment of ``pid`` a secret shows up (each place once:
    one planted form may contain another, e.g. base64 without + or / is also urlsafe)."""
    found = []
    for name in ("cmdline", "environ"):
        blob = (PROC / str(pid) / name).read_bytes()
        if any(secret in blob for secret in secrets):
            found.append(f"{pid}/{name}")
    return found


def _argv(pid: int) -> list[str]:
    return (PROC / str(pid) / "cmdline").read_bytes().decode().split("\0")[:-1]


def test_the_leak_check_finds_a_planted_secret(short_tmp: Path) -> None:
    key = NodeKey.generate()
    key_file = short_tmp / "key"
    key.save(key_file)
    secrets = _secret_forms(key, key_file)
    for secret in secrets[1:]:
        with subprocess.Popen(
            [sys.executable, "-c", "import sys; print(); sys.stdin.read()", secret.decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        ) as planted:
            assert planted.stdout is not None
            planted.stdout.readline()  # Until then /proc may show the argv before exec.
            assert _leaks(planted.pid, secrets) == [f"{planted.pid}/cmdline"]
            planted.communicate(b"")


def test_no_secret_in_daemon_or_worker_argv(compute_daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + 60
    while len(workers := _descendants(compute_daemon.pid)) < 2:
        assert time.monotonic() < deadline, "the compute workers did not start"
        time.sleep(0.2)
    key = NodeKey.load(compute_daemon.home.key_path)
    secrets = _secret_forms(key, compute_daemon.home.key_path)
    assert [leak for pid in (compute_daemon.pid, *workers) for leak in _leaks(pid, secrets)] == []
    # Beyond the node key: a worker's arguments are fixed flags, numbers and its work
    # directory, so no other secret (data channel keys, job inputs) can ride along.
    for pid in workers:
        argv = _argv(pid)
        assert argv[1:4] == ["-I", "-m", "p2pshare.compute.worker"]
        flags, values = argv[4::2], argv[5::2]
        assert set(flags) <= WORKER_FLAGS
        assert all(v.isdigit() or Path(v).is_relative_to(compute_daemon.home.root) for v in values)
