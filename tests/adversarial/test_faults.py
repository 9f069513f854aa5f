"""Faults around real daemon processes on 127.0.0.1: crashes, a full disk, files that
change under a share, a corrupt catalog.

kill -9 of the *downloader* and resuming without fetching a verified chunk twice:
tests/integration/test_get.py::test_resume_after_kill_9_fetches_no_verified_chunk_twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    DaemonStartError,
    cli_command,
    init_home,
    run_cli,
    start_all,
    wait_announced,
    write_varied_file,
)
from tests.integration.cluster import cli_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
MIB = 1 << 20
POLL_S = 0.02


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(condition: Any, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def partials(directory: Path) -> list[Path]:
    return list(directory.glob(".*.p2pshare-partial"))


# --- kill -9 of one seeder while another one serves --------------------------------------


@pytest.mark.parametrize(
    ("size_mib", "rate"),
    [
        pytest.param(8, 2_000_000, id="quick"),
        pytest.param(96, 12_000_000, id="large", marks=pytest.mark.heavy),
    ],
)
def test_kill_9_of_a_seeder_mid_transfer_another_seeder_finishes(
    short_tmp: Path, tmp_path: Path, size_mib: int, rate: int
) -> None:
    homes = [Home(short_tmp / name) for name in ("a", "b", "g")]
    data = tmp_path / "data.bin"
    write_varied_file(data, size_mib * MIB + 123)
    limit = ["--upload-rate", str(rate)]
    with ExitStack() as stack:
        init_home(homes[0])
        first = stack.enter_context(DaemonProcess(homes[0], args=limit))
        first.start()
        boot = (first.info["addrs"][0],)
        for home in homes[1:]:
            init_home(home, bootstrap=boot)
        second = stack.enter_context(DaemonProcess(homes[1], args=limit))
        getter = stack.enter_context(DaemonProcess(homes[2]))
        start_all([second, getter])
        shared = cli_json(homes[0], "share", str(data))
        cli_json(homes[1], "get", shared["ticket"], "-o", str(tmp_path / "second.bin"))
        wait_announced(homes[1], shared["cid"])

        out = tmp_path / "out" / "data.bin"
        out.parent.mkdir()
        get = subprocess.Popen(
            cli_command(homes[2], "get", shared["ticket"], "-o", str(out), "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # The partial file appears once the manifest is verified and both links are up.
        wait_for(lambda: partials(out.parent), "the download to start")
        assert get.poll() is None, "still running when its first seeder dies"
        first.kill()
        stdout, stderr = get.communicate(timeout=120)
        assert get.returncode == 0, stderr
        report = json.loads(stdout)
    assert digest(out) == digest(data)
    assert second.info["peer_id"] in report["peers"]
    assert report["banned"] == []
    assert partials(out.parent) == []


# --- a full disk -----------------------------------------------------------------------


@contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on ``path`` (needs root with CAP_SYS_ADMIN)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def grow(path: Path, size_mib: int) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size_mib}m", str(path)],
        check=True,
    )


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")
def test_a_full_disk_fails_clearly_leaves_no_file_and_resumes_once_space_is_back(
    short_tmp: Path, tmp_path: Path
) -> None:
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    init_home(seeder_home)
    init_home(getter_home)
    data = tmp_path / "data.bin"
    write_varied_file(data, 12 * MIB + 5)
    with (
        small_filesystem(tmp_path / "small", 6) as small,
        DaemonProcess(seeder_home) as seeder,
        DaemonProcess(getter_home) as getter,
    ):
        start_all([seeder, getter])
        shared = cli_json(seeder_home, "share", str(data))
        out = small / "data.bin"
        failed = run_cli(getter_home, "get", shared["ticket"], "-o", str(out), timeout=120)
        assert failed.returncode == ExitCode.FAILED, failed.stderr
        # The manifest gives the size: the get is refused before a byte is written (the
        # disk filling up mid-write is test_disk_full.py's, injected at the output).
        assert failed.stderr.startswith(f"error: not enough free space for {shared['cid']}")
        assert "run the same command again" in failed.stderr
        assert failed.stderr.count("\n") == 1, "one sentence, no traceback"
        assert list(small.iterdir()) == []

        grow(small, 32)
        report = cli_json(getter_home, "get", shared["ticket"], "-o", str(out))
        assert digest(out) == digest(data)
        assert report["resumed_chunks"] == 0
        assert partials(small) == []


# --- files that change while they are shared --------------------------------------------


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def rewrite_keeping_mtime(path: Path) -> None:
    """Same size, same mtime, other bytes: only the hash can tell."""
    stat = path.stat()
    with path.open("r+b") as f:
        f.seek(MIB + 17)
        f.write(b"tampered")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_shared_file_changed_on_disk_is_never_served_as_the_old_content(
    short_tmp: Path, tmp_path: Path
) -> None:
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    init_home(seeder_home)
    init_home(getter_home)
    changes = {"truncated": truncate, "rewritten": rewrite_keeping_mtime}
    with DaemonProcess(seeder_home) as seeder, DaemonProcess(getter_home) as getter:
        start_all([seeder, getter])
        for name, change in changes.items():
            source = tmp_path / f"{name}.bin"
            write_varied_file(source, 3 * MIB)
            shared = cli_json(seeder_home, "share", str(source))
            change(source)
            out = tmp_path / f"got-{name}.bin"
            result = run_cli(getter_home, "get", shared["ticket"], "-o", str(out), timeout=120)
            assert result.returncode == ExitCode.FAILED, result.stdout
            assert result.stderr.startswith(f"error: download of {shared['cid']} stopped with")
            # Field test #18: the cause was only in the log.
            assert "its shared copy changed on disk since it was shared" in result.stderr
            assert not out.exists()
            (row,) = [s for s in cli_json(seeder_home, "ls")["shares"] if s["cid"] == shared["cid"]]
            assert row["stale"], f"the {name} share is marked stale"


# --- a corrupt catalog -----------------------------------------------------------------


def zero_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(bytes(100))


def scribble_over_pages(path: Path) -> None:
    """Garbage over every page after the first: the schema survives, the b-trees do not."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))


@pytest.mark.parametrize(
    "damage",
    [
        scribble_over_pages,
        # Not a database at all: also covered without a daemon in tests/store.
        pytest.param(zero_header, marks=pytest.mark.heavy),
    ],
)
def test_a_corrupt_catalog_stops_the_daemon_clearly_and_the_documented_recovery_works(
    home: Home, tmp_path: Path, damage: Any
) -> None:
    init_home(home)
    data = tmp_path / "tree"
    data.mkdir()
    # Enough files that their rows span several catalog pages to damage.
    for index in range(300):
        (data / f"file{index:03}").write_bytes(index.to_bytes(2, "big"))
    with DaemonProcess(home) as daemon:
        daemon.start()
        shared = cli_json(home, "share", str(data))
    damage(home.catalog_path)

    with DaemonProcess(home) as broken, pytest.raises(DaemonStartError) as failure:
        broken.start()
    stderr = (home.root / "daemon.stderr").read_text()
    assert f"the catalog {home.catalog_path} cannot be used" in str(failure.value)
    assert "docs/store.md" in stderr
    assert "Traceback" not in stderr

    # docs/store.md, "Recovering from a corrupt catalog": stop the daemon (it is not
    # running), move catalog.sqlite and its -wal/-shm away, start again, share again.
    kept = tmp_path / "old-catalog"
    kept.mkdir()
    for suffix in ("", "-wal", "-shm"):
        old = home.catalog_path.with_name(home.catalog_path.name + suffix)
        if old.exists():
            old.rename(kept / old.name)
    with DaemonProcess(home) as recovered:
        recovered.start()
        again = cli_json(home, "share", str(data))
        assert again["cid"] == shared["cid"], "the same files give the same content ID"
        assert [s["cid"] for s in cli_json(home, "ls")["shares"]] == [shared["cid"]]
