"""Turn a path on disk into the files of a share and their chunk hashes.

Symlinks are never followed inside a shared directory: a link could point
anywhere on the machine, so it is skipped and reported (docs/store.md).  The
path given by the user may itself be a symlink; that one is resolved, since the
user named it.  Names that are not UTF-8 cannot be carried in a manifest; they are
skipped and reported in escaped form, as are other p2pshare homes and well-known
secret stores (p2pshare.store.guard).  Dotfiles are shared otherwise.

Of a file's mode only the owner's executable bit is shared (as git does); empty
directories are shared too, and a directory whose only contents were skipped
(symlinks, FIFOs) counts as empty, so the tree keeps its shape.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pshare.errors import LocalProtocolError, RemoteProtocolError, UserError
from p2pshare.proto.chunks import ChunkHasher
from p2pshare.proto.manifest import FileEntry, ShareKind, check_shareable
from p2pshare.proto.paths import printable
from p2pshare.store.checked import RACY_NS, FileIdentity
from p2pshare.store.guard import (
    OTHER_HOME,
    SECRET_DIRS,
    SECRET_FILES,
    SECRET_STORE,
    file_id,
    is_home_listing,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.store.guard import HomeGuard

READ_SIZE = 4 << 20


@dataclass(frozen=True)
class ScannedFile:
    rel_path: str
    abs_path: Path
    size: int
    mtime_ns: int
    executable: bool = False


@dataclass(frozen=True)
class HashedFile:
    """A file's manifest entry, and the file as it was while it was read."""

    entry: FileEntry
    identity: FileIdentity
    read_at_ns: int


@dataclass(frozen=True)
class Scan:
    kind: ShareKind
    root: Path
    files: tuple[ScannedFile, ...]
    skipped: tuple[tuple[str, str], ...]
    # Directories that hold no shared file and no other listed directory.
    empty_dirs: tuple[str, ...] = ()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def _scanned(abs_path: Path, rel_path: str, st: os.stat_result) -> ScannedFile:
    executable = bool(st.st_mode & stat.S_IXUSR)
    return ScannedFile(rel_path, abs_path, st.st_size, st.st_mtime_ns, executable)


def scan(
    path: Path, chunk_size: int, name: str | None = None, guard: HomeGuard | None = None
) -> Scan:
    """List what sharing ``path`` would publish; refuse what receivers would refuse.

    With ``guard``, the node's home and key are refused wherever the walk meets them,
    and other homes and secret stores are skipped (p2pshare.store.guard).
    """
    try:
        root = path.resolve(strict=True)
        st = root.stat()
    except FileNotFoundError:
        raise UserError(f"cannot share {path}: no such file or directory") from None
    except OSError as exc:
        raise UserError(f"cannot share {path}: {exc.strerror}") from None
    skipped: list[tuple[str, str]] = []
    directories: list[str] = []
    if stat.S_ISREG(st.st_mode):
        if guard is not None and file_id(st) == guard.key_id:
            raise guard.key_refusal(path)
        kind = ShareKind.FILE
        files = [_scanned(root, root.name, st)]
    elif stat.S_ISDIR(st.st_mode):
        kind = ShareKind.DIRECTORY
        files = _Walk(root, path, guard).run(skipped, directories)
    else:
        raise UserError(f"cannot share {path}: only regular files and directories can be shared")
    empty = empty_directories(directories, [f.rel_path for f in files])
    try:
        check_shareable(
            [(f.rel_path, f.size) for f in files],
            kind=kind,
            chunk_size=chunk_size,
            name=name,
            directories=empty,
            executable=[f.rel_path for f in files if f.executable],
        )
    except (RemoteProtocolError, LocalProtocolError) as exc:
        raise UserError(f"cannot share {path}: {exc}") from None
    return Scan(kind, root, tuple(files), tuple(skipped), empty)


def empty_directories(directories: list[str], files: list[str]) -> tuple[str, ...]:
    """The ``directories`` that hold none of ``files`` and none of the other directories."""
    occupied: set[str] = set()
    for path in [*directories, *files]:
        parts = path.split("/")
        occupied.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return tuple(sorted(d for d in directories if d not in occupied))


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Walk:
    """One walk of a shared directory, never following symlinks."""

    def __init__(self, root: Path, named: Path, guard: HomeGuard | None) -> None:
        self._root = root
        self._named = named
        self._guard = guard
        self._key_id = guard.key_id if guard is not None else None

    def run(self, skipped: list[tuple[str, str]], directories: list[str]) -> list[ScannedFile]:
        """The regular files under the root; every directory walked goes to ``directories``."""
        files: list[ScannedFile] = []

        def on_error(exc: OSError) -> None:
            raise UserError(f"cannot read {printable(str(exc.filename))}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(self._root, onerror=on_error):
            base = Path(dirpath)
            if self._skip_directory(base, set(filenames), skipped):
                dirnames.clear()
                continue
            if base != self._root:
                directories.append(self._rel(base))
            for dirname in list(dirnames):
                reason = self._skip_reason(base / dirname, dirname, is_dir=True)
                if reason is not None:
                    dirnames.remove(dirname)
                    skipped.append((self._rel(base / dirname), reason))
            for filename in filenames:
                abs_path = base / filename
                reason = self._skip_reason(abs_path, filename, is_dir=False)
                if reason is not None:
                    skipped.append((self._rel(abs_path), reason))
                    continue
                st = abs_path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    skipped.append((self._rel(abs_path), "symlink"))
                elif not stat.S_ISREG(st.st_mode):
                    skipped.append((self._rel(abs_path), "not a regular file"))
                elif self._guard is not None and file_id(st) == self._key_id:
                    raise self._guard.key_refusal(abs_path)
                else:
                    files.append(_scanned(abs_path, self._rel(abs_path), st))
        return files

    def _skip_directory(
        self, base: Path, filenames: set[str], skipped: list[tuple[str, str]]
    ) -> bool:
        """Refuse the walk if ``base`` is the node home; say whether to skip it whole."""
        if self._guard is None:
            return False
        if file_id(base.lstat()) == self._guard.root_id:
            raise self._guard.contains_refusal(self._named)
        if base != self._root and is_home_listing(filenames):
            skipped.append((self._rel(base), OTHER_HOME))
            return True
        return False

    def _skip_reason(self, path: Path, name: str, *, is_dir: bool) -> str | None:
        if not _is_utf8(name):
            return "its name is not valid UTF-8"
        if is_dir and path.is_symlink():
            return "symlink"
        if self._guard is not None and name in (SECRET_DIRS if is_dir else SECRET_FILES):
            return SECRET_STORE
        return None

    def _rel(self, path: Path) -> str:
        return printable(path.relative_to(self._root).as_posix())


class FileChangedError(UserError):
    """A file changed between its scan and the end of its read: what was read is no version
    of it, so nothing of the share may be published."""


def check_unchanged(
    file: ScannedFile, before: FileIdentity, after: FileIdentity, bytes_read: int
) -> None:
    """Refuse ``file`` unless it stayed as scanned while it was read from one descriptor.

    ``before`` and ``after`` are the descriptor's ``fstat`` around the read.  Size and
    mtime are compared with the scan, and device, inode and ctime across the read: an
    edit that keeps the length, or restores the mtime, still changes the ctime.  The
    public share (hashing) and the private one (sealing) both use this one check.
    """
    if (
        bytes_read != file.size
        or before.size != file.size
        or before.mtime_ns != file.mtime_ns
        or after != before
    ):
        raise FileChangedError(
            f"{file.abs_path} changed while it was being shared; nothing was published, "
            "share it again when it is no longer being written"
        )


def settle(before: FileIdentity) -> None:
    """Wait, at most RACY_NS, until an edit from now on cannot leave ``before`` unchanged.

    The kernel stamps files from a coarse clock: an edit in the same tick as the
    file's last change would keep its size, mtime and ctime, and a copy read meanwhile
    would mix two versions unseen.  Only a file changed in the last RACY_NS waits.
    """
    wait_ns = min(before.ctime_ns + RACY_NS - time.time_ns(), RACY_NS)
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)


def hash_file(file: ScannedFile, chunk_size: int, progress: Callable[[int], None]) -> HashedFile:
    """Hash one file in chunks; refuse it if it changes while being read."""
    hasher = ChunkHasher(chunk_size)
    hashes: list[bytes] = []
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    try:
        with file.abs_path.open("rb", buffering=0) as f:
            before = FileIdentity.of(os.fstat(f.fileno()))
            read_at_ns = time.time_ns()
            while count := f.readinto(buffer):
                hashes += hasher.update(view[:count])
                progress(count)
            after = FileIdentity.of(os.fstat(f.fileno()))
    except OSError as exc:
        raise UserError(f"cannot read {file.abs_path}: {exc.strerror}") from None
    hashes += hasher.finish()
    check_unchanged(file, before, after, hasher.bytes_hashed)
    entry = FileEntry(file.rel_path, file.size, b"".join(hashes), file.executable)
    return HashedFile(entry, after, read_at_ns)
