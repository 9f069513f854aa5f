"""What stored copies and private shares leave in the home: never a file that changed
while it was read, nothing readable by others, nothing after a failure (no daemon)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store import private as private_module
from p2pshare.store import staging as staging_module
from p2pshare.store.catalog import Catalog
from p2pshare.store.checked import RACY_NS, FileIdentity
from p2pshare.store.scanner import FileChangedError, settle
from p2pshare.store.shares import ShareStore
from p2pshare.store.staging import PREFIX, StoreFullError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from p2pshare.store.shares import PreparedShare

CHUNK = MIN_CHUNK_SIZE
FRIEND = NodeKey.from_seed(b"f" * 32).peer_id
OLD, NEW = b"o" * (3 * CHUNK), b"n" * (3 * CHUNK)
CHANGED = "changed while it was being shared; nothing was published, share it again"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask of a daemon started by a service manager: modes must not come from it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def store(tmp_path: Path, open_umask: None) -> Iterator[ShareStore]:
    (tmp_path / "home").mkdir(mode=0o700)
    catalog = Catalog(tmp_path / "home" / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "home" / "content", NodeKey.from_seed(bytes(32)), CHUNK)
    catalog.close()


def _old_file(tmp_path: Path) -> Path:
    """A file last written an hour ago, as most shared files are."""
    path = tmp_path / "report.bin"
    path.write_bytes(OLD)
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(hour_ago, hour_ago))
    return path


def _private(store: ShareStore, path: Path, **kwargs: Any) -> PreparedShare:
    return store.prepare_private(path, [FRIEND], **kwargs)


def _copy(store: ShareStore, path: Path, **kwargs: Any) -> PreparedShare:
    return store.prepare(path, copy=True, **kwargs)


STORED_SHARES = [pytest.param(_private, id="share --to"), pytest.param(_copy, id="share --copy")]


def _leftovers(store: ShareStore, tmp_path: Path) -> list[str]:
    content = tmp_path / "home" / "content"
    assert store.catalog.shares() == []
    return sorted(p.name for p in content.iterdir()) if content.exists() else []


def _rewrite_during(monkeypatch: pytest.MonkeyPatch, path: Path, *, keep_mtime: bool) -> None:
    """Rewrite ``path`` in place (same length) once its first chunk has been read."""
    real_read = FileIdentity.of
    calls = 0

    def of(st: os.stat_result) -> FileIdentity:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second fstat: the read is over; write before it looks
            before = path.stat()
            with path.open("r+b") as f:
                f.write(NEW)
            if keep_mtime:
                os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            st = path.stat()
        return real_read(st)

    monkeypatch.setattr(FileIdentity, "of", staticmethod(of))


@pytest.mark.parametrize("prepare", STORED_SHARES)
def test_a_file_rewritten_in_place_while_stored_is_never_published(
    store: ShareStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[..., PreparedShare],
) -> None:
    path = _old_file(tmp_path)
    _rewrite_during(monkeypatch, path, keep_mtime=False)
    with pytest.raises(FileChangedError) as refused:
        prepare(store, path)
    assert str(refused.value) == f"{path} {CHANGED} when it is no longer being written"
    assert _leftovers(store, tmp_path) == []


@pytest.mark.parametrize("prepare", STORED_SHARES)
def test_an_edit_right_after_writing_with_the_mtime_put_back_is_still_caught(
    store: ShareStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[..., PreparedShare],
) -> None:
    """Same size, same mtime, in the clock tick of the last write: only waiting for the
    tick to pass before reading lets the ctime tell."""
    path = tmp_path / "fresh.bin"
    path.write_bytes(OLD)
    _rewrite_during(monkeypatch, path, keep_mtime=True)
    with pytest.raises(FileChangedError):
        prepare(store, path)
    assert _leftovers(store, tmp_path) == []


def test_a_file_changed_just_now_is_read_once_its_clock_tick_has_passed(tmp_path: Path) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(OLD)
    identity = FileIdentity.of(path.stat())
    settle(identity)
    assert time.time_ns() >= identity.ctime_ns + RACY_NS


@pytest.mark.parametrize("ours", [False, True])
def test_a_file_the_node_just_wrote_itself_is_copied_without_waiting(
    store: ShareStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ours: bool
) -> None:
    """A job's stdout, just written by the worker, waited a clock tick (100 ms) before
    it was kept: a third of a trivial job's round trip (bench/compute_jobs.py)."""
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    path = tmp_path / "job.out"
    path.write_bytes(OLD)
    prepared = store.prepare(path, copy=True, confirmed=True, ours=ours)
    assert prepared.stored
    assert bool(waits) is not ours


def _modes(root: Path) -> dict[str, str]:
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(dirpath, name)  # noqa: PTH118
            found[os.path.relpath(path, root)] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return found


@pytest.mark.parametrize("prepare", STORED_SHARES)
def test_what_the_store_keeps_is_readable_by_the_node_user_only(
    store: ShareStore, tmp_path: Path, prepare: Callable[..., PreparedShare]
) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep.txt").write_bytes(b"deep")
    (tree / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "empty").mkdir()
    store.commit(prepare(store, tree))
    modes = _modes(tmp_path / "home")
    assert modes.pop("catalog.sqlite") == "0o600"
    for name in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        assert modes.pop(name, "0o600") == "0o600"
    assert len(modes) > 4
    for name, mode in modes.items():
        is_dir = (tmp_path / "home" / name).is_dir()
        assert mode == ("0o700" if is_dir else "0o600"), name


def _failing_write(monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """The store's file system refuses every write into the store with ``error``."""
    real_open = staging_module.private_file

    class Refusing:
        def __init__(self, raw: Any) -> None:
            self._raw = raw

        def write(self, _data: bytes) -> int:
            raise OSError(error, os.strerror(error))

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._raw.close()

    monkeypatch.setattr(staging_module, "private_file", lambda path: Refusing(real_open(path)))


@pytest.mark.parametrize("prepare", STORED_SHARES)
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_sentence_with_the_space_needed_and_leaves_nothing(
    store: ShareStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[..., PreparedShare],
    error: int,
) -> None:
    path = _old_file(tmp_path)
    _failing_write(monkeypatch, error)
    # Room when the share starts; the disk fills up while it is written.
    free = iter([10**9, 12_345])
    monkeypatch.setattr(store.staging, "_free_space", lambda _path: next(free))
    with pytest.raises(StoreFullError) as refused:
        prepare(store, path)
    said = str(refused.value)
    content = tmp_path / "home" / "content"
    assert f"cannot store a copy of {path}: the file system of {content} is " in said
    assert ("is full (" if error == errno.ENOSPC else "is over its disk quota (") in said
    assert "12345 bytes free); nothing was published" in said
    assert "p2pshare gc" in said
    assert _leftovers(store, tmp_path) == []


def test_a_file_too_large_for_the_store_file_system_is_refused_clearly(
    store: ShareStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _old_file(tmp_path)
    _failing_write(monkeypatch, errno.EFBIG)
    with pytest.raises(StoreFullError, match=r"larger than the file system of .* allows"):
        _private(store, path)
    assert _leftovers(store, tmp_path) == []


@pytest.mark.parametrize("prepare", STORED_SHARES)
def test_a_share_that_cannot_fit_is_refused_before_anything_is_written(
    store: ShareStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[..., PreparedShare],
) -> None:
    path = _old_file(tmp_path)
    monkeypatch.setattr(store.staging, "_free_space", lambda _path: 100)
    with pytest.raises(StoreFullError, match=r"needs \d+ bytes, 100 bytes free"):
        prepare(store, path)
    assert _leftovers(store, tmp_path) == []


class ClientGoneError(Exception):
    """What a progress callback raises once the command that asked went away."""


@pytest.mark.parametrize("prepare", STORED_SHARES)
def test_a_share_stopped_mid_way_leaves_no_staging(
    store: ShareStore, tmp_path: Path, prepare: Callable[..., PreparedShare]
) -> None:
    path = _old_file(tmp_path)

    def gone(_done: int, _total: int) -> None:
        raise ClientGoneError

    with pytest.raises(ClientGoneError):
        prepare(store, path, progress=gone)
    assert _leftovers(store, tmp_path) == []


def test_a_failed_share_of_an_unreadable_file_says_so_and_leaves_nothing(
    store: ShareStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _old_file(tmp_path)

    def unreadable(*_args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(private_module, "encrypt_chunk", unreadable)
    with pytest.raises(Exception, match=f"cannot share {path}: Input/output error") as failed:
        _private(store, path)
    assert not isinstance(failed.value, OSError)
    assert _leftovers(store, tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_sweep_removes_staging_of_dead_processes_never_a_live_share(
    store: ShareStore, tmp_path: Path
) -> None:
    content = tmp_path / "home" / "content"
    content.mkdir(mode=0o700)
    dead = content / f"{PREFIX}{_dead_pid()}-1"
    (dead / "tree").mkdir(parents=True)
    (dead / "tree" / "000000").write_bytes(b"x" * 10)
    ours_abandoned = content / f"{PREFIX}{os.getpid()}-2"
    ours_abandoned.mkdir()
    # pid 1 lives as long as the machine: a staging it named is not ours to judge.
    foreign_live = content / f"{PREFIX}1-3"
    foreign_live.mkdir()
    stored = content / ("ab" * 32)
    stored.mkdir()
    with store.staging.new(tmp_path / "x", 0) as live:
        (live / "partly-written").write_bytes(b"y")
        assert store.staging.sweep() == 10
        assert live.exists()
        assert sorted(p.name for p in content.iterdir()) == sorted(
            [live.name, foreign_live.name, stored.name]
        )
    assert store.staging.sweep(any_process=True) == 0
    assert sorted(p.name for p in content.iterdir()) == [stored.name]
