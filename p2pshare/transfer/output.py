"""Where a download's verified chunks go until it is complete.

A file share is written to ``.NAME.p2pshare-partial`` next to the destination, a
directory share to a directory of that name; each chunk is written at its offset
(``pwrite``) only after it was verified.  ``sync`` makes everything written so far
durable, and only then may the caller record those chunks as verified: after a
crash the record never claims a chunk the disk does not hold.  ``finalize`` syncs,
then moves the partial into place by the rules of
:mod:`~p2pshare.transfer.destination` (checked again then: the destination may have
appeared meanwhile).

The partial is this node's own: it is created new (``O_EXCL``, ``mkdir``), reopened
only to resume a download the caller's record says wrote it, and something else
found at its path is never reused nor removed: the download refuses instead.

``write_chunk``, ``read_chunk_into`` and ``sync`` may run at the same time in different
worker threads (the downloader writes, the uploader serves verified chunks, a sync
runs): one lock guards the table of open files, so no thread can use a descriptor
another has closed and the OS has reused for a different file.

Paths inside a directory share were checked by the manifest decoder (relative,
no ``..``, no duplicates); files are opened with ``O_NOFOLLOW`` and parents must be
real directories inside the partial directory, so nothing is written elsewhere even
if someone plants symlinks in it.  The share's empty directories are created the
same way when the partial is opened.

While partial, everything is private (files 0600, directories 0700); ``finalize``
gives the modes of :mod:`p2pshare.modes` (from the requesting user's umask and the
manifest's executable flags) just before the rename, through descriptors, so a
path swapped meanwhile cannot redirect a chmod.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pshare.errors import UserError, WouldBlockError
from p2pshare.metrics import METRICS
from p2pshare.modes import PRIVATE_UMASK, dir_mode, file_mode
from p2pshare.proto.chunks import hash_chunk
from p2pshare.proto.manifest import ShareKind
from p2pshare.store.pread import read_at
from p2pshare.transfer.destination import place, sync_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pshare.proto.chunks import BytesLike
    from p2pshare.proto.manifest import Manifest
    from p2pshare.transfer.outpath import HomeFence

PARTIAL_SUFFIX = ".p2pshare-partial"
MAX_OPEN_FILES = 64


def partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


@dataclass(frozen=True)
class Arrival:
    """A chunk as received, not yet checked."""

    peer: str
    index: int
    expected: bytes
    payload: BytesLike


def _disk_error(path: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write {path}: {exc.strerror}; the download is kept and resumes "
        "with the same command once this is fixed"
    )


class PartialOutput:
    """The partial file or directory of one download; ``umask`` sets its final modes,
    ``fence`` the node's home, which a user's download must stay out of (None: the
    node's own store)."""

    def __init__(
        self,
        dest: Path,
        manifest: Manifest,
        *,
        umask: int = PRIVATE_UMASK,
        fence: HomeFence | None = None,
    ) -> None:
        self.dest = dest
        self.manifest = manifest
        self.umask = umask
        self.fence = fence
        self.path = partial_path(dest)
        self._fds: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._lock = threading.Lock()

    def open(self, *, resume: bool) -> bool:
        """Create the partial, or reopen it when ``resume`` (the caller's record says this
        download wrote it); return whether it was reused."""
        reused = resume and self.reusable()
        if not reused:
            self._create()
        for directory in self.manifest.directories:
            self._make_directories(directory.split("/"))
        return reused

    def _create(self) -> None:
        try:
            if self.manifest.kind is ShareKind.DIRECTORY:
                self.path.mkdir(mode=0o700)
            else:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise UserError(
                f"{self.path} is in the way of the download to {self.dest}: this node has "
                "no record of writing it; move it away and run the same command again"
            ) from None
        except OSError as exc:
            raise _disk_error(self.path, exc) from None

    def reusable(self) -> bool:
        """Whether a partial of the right shape is there to resume."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return False
        if self.manifest.kind is ShareKind.DIRECTORY:
            return stat.S_ISDIR(st.st_mode)
        return stat.S_ISREG(st.st_mode) and st.st_size <= self.manifest.total_size

    def _file_path(self, entry_index: int) -> Path:
        if self.manifest.kind is ShareKind.FILE:
            return self.path
        return self.path / self.manifest.entries[entry_index].path

    def _fd(self, entry_index: int) -> int:
        """The open file of an entry; the caller holds the lock."""
        fd = self._fds.get(entry_index)
        if fd is not None:
            return fd
        if len(self._fds) >= MAX_OPEN_FILES:
            self._close_one()
        path = self._file_path(entry_index)
        try:
            if self.manifest.kind is ShareKind.DIRECTORY:
                self._make_parents(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _disk_error(path, exc) from None
        self._fds[entry_index] = fd
        return fd

    def _make_parents(self, path: Path) -> None:
        self._make_directories(path.relative_to(self.path).parts[:-1])

    def _make_directories(self, parts: Sequence[str]) -> None:
        """Create ``parts`` under the partial directory, each a real directory (0700)."""
        current = self.path
        for part in parts:
            current = current / part
            try:
                current.mkdir(mode=0o700)
            except FileExistsError:
                if not stat.S_ISDIR(current.lstat().st_mode):
                    raise UserError(f"{current} is not a directory; remove it and retry") from None
            except OSError as exc:
                raise _disk_error(current, exc) from None

    def _close_one(self) -> None:
        entry_index, fd = next(iter(self._fds.items()))
        if entry_index in self._dirty:
            os.fsync(fd)
            self._dirty.discard(entry_index)
        os.close(fd)
        del self._fds[entry_index]

    def write_chunk(self, global_index: int, data: BytesLike) -> None:
        location = self.manifest.locate_chunk(global_index)
        with self._lock:
            fd = self._fd(location.entry_index)
            try:
                written = os.pwrite(fd, data, location.offset)
            except OSError as exc:
                raise _disk_error(self._file_path(location.entry_index), exc) from None
            if written != len(data):
                raise _disk_error(self._file_path(location.entry_index), OSError(28, "short write"))
            self._dirty.add(location.entry_index)

    def check_and_write(self, batch: list[Arrival]) -> list[bool]:
        """For each chunk: does it match its hash?  Only those that do are written.

        Runs in a worker thread; the caller marks a chunk verified only after this
        returned, so nothing is recorded before it is on its way to disk.
        """
        good = []
        for arrival in batch:
            ok = hash_chunk(arrival.payload) == arrival.expected
            METRICS.chunk_checked(ok=ok)
            if ok:
                self.write_chunk(arrival.index, arrival.payload)
            good.append(ok)
        return good

    def read_chunk_into(self, global_index: int, out: bytearray, *, wait: bool = True) -> int:
        """Read a chunk already written into ``out``; its length.  ``wait=False``:
        WouldBlockError unless it is cached and no writer holds the files."""
        location = self.manifest.locate_chunk(global_index)
        data = memoryview(out)[: location.length]
        if not self._lock.acquire(blocking=wait):
            raise WouldBlockError("a chunk is being written")
        try:
            read = read_at(self._fd(location.entry_index), data, location.offset, wait=wait)
        finally:
            self._lock.release()
        if read != location.length:
            path = self._file_path(location.entry_index)
            raise OSError(errno.EIO, f"{path} is shorter than its verified chunks")
        return read

    def sync(self) -> None:
        """Make every chunk written before this call durable (may run in a worker thread).

        The dirty set is swapped out first, so a chunk written while this runs stays
        dirty for the next sync instead of being forgotten.  The files are synced
        through duplicated descriptors outside the lock, so writes go on meanwhile
        and a file closed meanwhile (``_close_one`` syncs it first) stays valid here.
        """
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            # A file missing here was closed by _close_one, which synced it first.
            fds = {i: os.dup(self._fds[i]) for i in dirty if i in self._fds}
        try:
            for entry_index, fd in fds.items():
                try:
                    os.fsync(fd)
                except OSError as exc:
                    with self._lock:
                        self._dirty.add(entry_index)
                    raise _disk_error(self._file_path(entry_index), exc) from None
        finally:
            for fd in fds.values():
                os.close(fd)

    def finalize(self, *, force: bool) -> None:
        """Set sizes, sync, and move the finished partial to the destination."""
        if self.fence is not None:
            # Before a file of the partial is reopened (created, were the directory
            # swapped for a link into the home meanwhile).
            self.fence.check(self.dest)
        with self._lock:
            for index, entry in enumerate(self.manifest.entries):
                fd = self._fd(index)
                os.ftruncate(fd, entry.size)
                self._dirty.add(index)
        self.sync()
        self.close()
        if self.manifest.kind is ShareKind.DIRECTORY:
            _sync_tree(self.path)
        self._set_final_modes()
        place(self.path, self.dest, force=force, fence=self.fence)

    def _set_final_modes(self) -> None:
        """Give the files, then the directories, of the share their final modes.

        Directories go deepest first and the top one last, so each is opened while
        its parent is still the private 0700, whatever the umask takes away.
        """
        for index, entry in enumerate(self.manifest.entries):
            _chmod(self._file_path(index), file_mode(self.umask, executable=entry.executable))
        if self.manifest.kind is not ShareKind.DIRECTORY:
            return
        directories = set(self.manifest.directories)
        for path in [*(entry.path for entry in self.manifest.entries), *directories]:
            parts = path.split("/")
            directories.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        mode = dir_mode(self.umask)
        for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
            _chmod(self.path / directory, mode)
        _chmod(self.path, mode)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()


def _chmod(path: Path, mode: int) -> None:
    """chmod through a descriptor opened without following a final symlink (and
    without blocking, should something have put a FIFO there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _disk_error(path, exc) from None


def _sync_tree(root: Path) -> None:
    for dirpath, _dirnames, _filenames in os.walk(root):
        sync_dir(Path(dirpath))
