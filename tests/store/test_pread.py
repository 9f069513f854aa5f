"""Reads the event loop may make: only what the page cache holds, else WouldBlockError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pshare.errors import WouldBlockError
from p2pshare.store.pread import read_at

DATA = bytes(range(256)) * 4096  # 1 MiB


def _file(tmp_path: Path) -> int:
    path = tmp_path / "chunk.bin"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDONLY)


def test_a_cached_range_is_read_without_waiting(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    try:
        out = bytearray(len(DATA))
        assert read_at(fd, memoryview(out), 0, wait=False) == len(DATA)
        assert out == DATA
    finally:
        os.close(fd)


def test_a_range_past_the_end_is_left_to_the_waiting_read(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    try:
        out = memoryview(bytearray(4096))
        with pytest.raises(WouldBlockError):
            read_at(fd, out, len(DATA) - 100, wait=False)
        assert read_at(fd, out, len(DATA) - 100) == 100
    finally:
        os.close(fd)


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on, from /proc/self/mounts."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _device, mount_point, fs_type = line.split()[:3]
        if str(path).startswith(mount_point) and len(mount_point) > len(best):
            best, kind = mount_point, fs_type
    return kind


def test_a_range_the_page_cache_dropped_is_never_read_from_disk_without_waiting(
    tmp_path: Path,
) -> None:
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("tmpfs keeps every page in memory: there is no disk to wait for")
    fd = _file(tmp_path)
    try:
        os.fsync(fd)  # clean pages only can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = memoryview(bytearray(len(DATA)))
        with pytest.raises(WouldBlockError):
            read_at(fd, out, 0, wait=False)
        assert read_at(fd, out, 0) == len(DATA)
        assert out == DATA
    finally:
        os.close(fd)
