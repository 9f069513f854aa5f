"""Turn a path on disk into the files of a share and their chunk hashes.

Symlinks are never followed inside a shared directory: a link could point
anywhere on the machine, so it is skipped and reported (docs/store.md).  The
path given by the user may itself be a symlink; that one is resolved, since the
user named it.

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
from p2pshare.store.checked import FileIdentity

if TYPE_CHECKING:
    from collections.abc import Callable

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


def scan(path: Path, chunk_size: int, name: str | None = None) -> Scan:
    """List what sharing ``path`` would publish; refuse what receivers would refuse."""
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
        kind = ShareKind.FILE
        files = [_scanned(root, root.name, st)]
    elif stat.S_ISDIR(st.st_mode):
        kind = ShareKind.DIRECTORY
        files = _walk(root, skipped, directories)
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


def _walk(root: Path, skipped: list[tuple[str, str]], directories: list[str]) -> list[ScannedFile]:
    """The regular files under ``root``; every directory walked goes to ``directories``."""
    files: list[ScannedFile] = []

    def on_error(exc: OSError) -> None:
        raise UserError(f"cannot read {exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        base = Path(dirpath)
        if base != root:
            directories.append(_rel(root, base))
        for dirname in list(dirnames):
            if (base / dirname).is_symlink():
                dirnames.remove(dirname)
                skipped.append((_rel(root, base / dirname), "symlink"))
        for filename in filenames:
            abs_path = base / filename
            rel = _rel(root, abs_path)
            st = abs_path.lstat()
            if stat.S_ISLNK(st.st_mode):
                skipped.append((rel, "symlink"))
            elif not stat.S_ISREG(st.st_mode):
                skipped.append((rel, "not a regular file"))
            else:
                files.append(_scanned(abs_path, rel, st))
    return files


def _rel(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"cannot share {path}: its name is not valid UTF-8") from None
    return rel


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
    if hasher.bytes_hashed != file.size or after.mtime_ns != file.mtime_ns or after != before:
        raise UserError(f"{file.abs_path} changed while it was being hashed; share it again")
    entry = FileEntry(file.rel_path, file.size, b"".join(hashes), file.executable)
    return HashedFile(entry, after, read_at_ns)
