"""Writing into the home's ``content/``: staging, private modes, full disks, leftovers.

A stored copy (``share --copy``) or a private share's ciphertext (``share --to``) is
written into a staging directory ``content/.staging-PID-N`` and renamed into place only
once it is hashed and signed.  Whatever stops it before that (the file changed, the
disk filled, the command went away, a bug) removes the staging directory.  A daemon
killed mid-way cannot, so the daemon removes stale staging directories when it starts
and ``gc`` removes those of processes that are gone: never one a share of this process
is still writing.

Everything written there is the node's, not the user's: directories 0700 and files
0600 whatever the umask, like the rest of the home (docs/store.md).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from p2pshare.errors import UserError
from p2pshare.store.checked import FileIdentity
from p2pshare.store.scanner import check_unchanged, settle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from p2pshare.store.scanner import ScannedFile

log = logging.getLogger(__name__)

PREFIX = ".staging-"
DIR_MODE = 0o700
FILE_MODE = 0o600
COPY_SIZE = 1 << 20
# The errors of a write that the disk, not p2pshare, refused.
_NO_SPACE = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its disk quota"}


class StoreFullError(UserError):
    """The home's file system cannot hold what a share would store."""


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged user may still write on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def private_dir(path: Path) -> None:
    """Make the new directory ``path``, 0700 whatever the umask (which only takes away)."""
    path.mkdir(mode=DIR_MODE)


def private_dirs(root: Path, path: Path) -> None:
    """Make ``path`` and each missing directory between it and ``root``, all 0700."""
    missing = []
    while path != root and not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        private_dir(directory)


def private_file(path: Path) -> BinaryIO:
    """Open the new file ``path`` for writing, 0600 whatever the umask, unbuffered."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return open(os.open(path, flags, FILE_MODE), "wb", buffering=0)  # noqa: PTH123 - an fd, not a path


def copy_checked(file: ScannedFile, target: Path, *, ours: bool = False) -> None:
    """Copy ``file`` to the new ``target`` (0600, the file's mtime); refuse it if it
    changes meanwhile (FileChangedError): a copy mixing two versions is never stored.

    ``ours``: this node wrote and closed the file in its own home, so no edit can race
    the copy, and it need not wait for the clock tick of its last write to pass."""
    copied = 0
    with file.abs_path.open("rb", buffering=0) as src, private_file(target) as dst:
        before = FileIdentity.of(os.fstat(src.fileno()))
        if not ours:
            settle(before)
        while data := src.read(COPY_SIZE):
            dst.write(data)
            copied += len(data)
        after = FileIdentity.of(os.fstat(src.fileno()))
        os.utime(dst.fileno(), ns=(time.time_ns(), file.mtime_ns))
    check_unchanged(file, before, after, copied)


class Staging:
    """The staging directories of one store, and which of them are being written."""

    def __init__(self, content_dir: Path, free_space: Callable[[Path], int] = free_bytes) -> None:
        self._content_dir = content_dir
        self._free_space = free_space
        self._live: set[Path] = set()
        # Shares are prepared in worker threads while gc runs on the event loop.
        self._lock = threading.Lock()

    @contextmanager
    def new(self, shared: Path, needed: int) -> Iterator[Path]:
        """A new staging directory for storing ``needed`` bytes of ``shared``.

        Whatever the body raises removes the directory; a space error of the disk
        becomes StoreFullError, any other OSError one sentence naming ``shared``.
        The body renames the directory away to keep it.
        """
        if not self._content_dir.is_dir():
            private_dir(self._content_dir)
        free = self._free_space(self._content_dir)
        if needed > free:
            raise self._full(shared, needed, free, "has too little free space")
        path = self._content_dir / f"{PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        with self._lock:
            private_dir(path)
            self._live.add(path)
        try:
            yield path
        except OSError as exc:
            raise self._error(exc, shared, needed) from None
        finally:
            with self._lock:
                self._live.discard(path)
            shutil.rmtree(path, ignore_errors=True)

    def sweep(self, *, any_process: bool = False) -> int:
        """Remove the staging directories no share is writing; return the bytes freed.

        Those of this process not being written, and those of processes that are gone;
        ``any_process``: those of other live processes too (a pid reused since a crash).
        Only the daemon holding the home's lock may say so, at start, before any share.
        """
        freed = 0
        try:
            entries = list(os.scandir(self._content_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.name.startswith(PREFIX):
                continue
            path = Path(entry.path)
            with self._lock:
                if path in self._live or not (any_process or _stale_owner(entry.name)):
                    continue
                freed += _tree_size(path)
                shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a share that did not finish", path)
        return freed

    def _error(self, exc: OSError, shared: Path, needed: int) -> UserError:
        state = _NO_SPACE.get(exc.errno or 0)
        if state is not None:
            try:
                free = self._free_space(self._content_dir)
            except OSError:
                free = 0
            return self._full(shared, needed, free, state)
        if exc.errno == errno.EFBIG:
            return StoreFullError(
                f"cannot store a copy of {shared}: a file is larger than the file system "
                f"of {self._content_dir} allows; nothing was published"
            )
        where = f" ({exc.filename})" if exc.filename else ""
        return UserError(f"cannot share {shared}: {exc.strerror}{where}; nothing was published")

    def _full(self, shared: Path, needed: int, free: int, state: str) -> StoreFullError:
        return StoreFullError(
            f"cannot store a copy of {shared}: the file system of {self._content_dir} "
            f"{state} (it needs {size_text(needed)}, {size_text(free)} free); nothing was "
            "published. Free some space (p2pshare gc removes unpinned stored content) "
            "and share it again"
        )


def _stale_owner(name: str) -> bool:
    """Whether the process that made staging directory ``name`` is this one or gone."""
    try:
        pid = int(name[len(PREFIX) :].split("-", 1)[0])
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size  # noqa: PTH118
    return total


def size_text(size: int) -> str:
    """A size for a sentence: exact below a megabyte."""
    return f"{size} bytes" if size < 1_000_000 else f"{size / 1e6:.1f} MB"
