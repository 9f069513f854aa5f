"""What ``get -o`` and ``compute run -o`` may do to the path the user named.

The rules (docs/cli.md, "Where -o puts things"):

* a path that does not exist is created;
* an existing regular file, or a symbolic link to something other than a directory
  (the link itself, never its target), is replaced only with ``--force``, in one rename;
* a symbolic link to a directory is never replaced: the user would believe their
  directory was;
* an existing directory is never removed, replaced or written into, ``--force`` or
  not: the command refuses and says to choose a new path.  ``-o .`` or ``-o ~`` is a
  mistake far more often than a wish to lose that directory, and putting the content
  inside it would make where a download lands depend on what happens to exist;
* anything else (a FIFO, a socket, a device) is refused;
* nothing is written inside the node's home (``fence``: see
  :mod:`~p2pshare.transfer.outpath`), checked before anything else so that no hint
  to use ``--force`` is ever given for a path there.

The check runs when the command starts and again when the finished content is moved
into place (the destination may appear during a long download), and that move cannot
replace what appeared between the check and the rename: a rename that must not
replace anything uses ``RENAME_NOREPLACE``, and one that replaces a file fails on a
directory (EISDIR).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from enum import Enum
from typing import TYPE_CHECKING

from p2pshare.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.transfer.outpath import HomeFence


class Existing(Enum):
    """What lies at a destination path (``lstat``, links not followed)."""

    FILE = "file"
    LINK = "link"
    DIRECTORY = "directory"
    OTHER = "other"


class DestinationExistsError(UserError):
    """The destination exists and may not be replaced (without --force, or ever)."""


class NoSpaceError(UserError):
    """The destination's file system has less free space than the content needs."""


def existing(path: Path) -> Existing | None:
    """What is at ``path``; None if nothing (OSError if that cannot be known, as when a
    parent is a looping link)."""
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return Existing.FILE
    if stat.S_ISLNK(mode):
        return Existing.LINK
    if stat.S_ISDIR(mode):
        return Existing.DIRECTORY
    return Existing.OTHER


def directory_refusal(dest: Path) -> DestinationExistsError:
    return DestinationExistsError(
        f"{dest} is an existing directory, which p2pshare never replaces or writes into "
        f"(not even with --force); choose a new path for -o, such as {dest / 'NAME'}"
    )


def check_destination(
    dest: Path, *, force: bool, fence: HomeFence | None = None
) -> Existing | None:
    """Refuse a destination the command may not write (UserError); return what is there.

    Every hint here is safe to follow: ``--force`` is suggested only where it would
    replace a single file or link.  ``fence`` is the node's home for a user's output,
    None for what the node writes into its own store.
    """
    if fence is not None:
        fence.check(dest)
    if dest.name in ("", ".", ".."):
        raise UserError(f"{dest} does not name a file; choose a path such as DIR/NAME for -o")
    try:
        found = existing(dest)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    if found is Existing.DIRECTORY:
        raise directory_refusal(dest)
    if found is Existing.LINK and dest.is_dir():
        raise DestinationExistsError(
            f"{dest} is a symbolic link to a directory, which p2pshare never replaces (not "
            f"even with --force); choose a new path for -o, such as {dest / 'NAME'}"
        )
    if found is Existing.OTHER:
        raise DestinationExistsError(
            f"{dest} exists and is not a regular file (a FIFO, socket or device); "
            "p2pshare replaces only regular files and symbolic links: choose another -o"
        )
    if found is Existing.LINK and not force:
        raise DestinationExistsError(
            f"{dest} is a symbolic link; use --force to replace the link (its target is left alone)"
        )
    if found is Existing.FILE and not force:
        raise DestinationExistsError(f"{dest} already exists; use --force to replace it")
    if not dest.parent.is_dir():
        raise UserError(f"cannot write {dest}: {dest.parent} is not a directory")
    return found


def place(staged: Path, dest: Path, *, force: bool, fence: HomeFence | None = None) -> None:
    """Move ``staged`` (a file or directory this node made) to ``dest``, under the rules.

    Refused or failed, ``staged`` is left where it was and nothing at ``dest`` changed.
    The rules, the home's fence included, are checked again here, right before the
    rename: a directory on the way may have been swapped since the command started.
    """
    found = check_destination(dest, force=force, fence=fence)
    try:
        if found is None:
            rename_noreplace(staged, dest)
        elif existing(staged) is Existing.FILE:
            # rename(2) replaces a file or a link itself, and fails on a directory
            # that appeared since the check.
            staged.replace(dest)
        else:
            _replace_with_directory(staged, dest)
    except FileExistsError:
        # Something appeared since the check: refuse as the check now would.
        check_destination(dest, force=force, fence=fence)
        raise DestinationExistsError(f"{dest} appeared while the download ran") from None
    except IsADirectoryError:
        raise directory_refusal(dest) from None
    except OSError as exc:
        raise UserError(f"cannot move the finished content to {dest}: {exc.strerror}") from None
    sync_dir(dest.parent)


def _replace_with_directory(staged: Path, dest: Path) -> None:
    """Replace the file or link ``dest`` with the directory ``staged``.

    A directory cannot be renamed over a file: the file is moved aside, the directory
    put in its place, then the file removed; the file is put back if that fails, and
    a directory found aside (one that appeared since the check) is put back untouched.
    """
    aside = dest.with_name(f".{dest.name}.p2pshare-replaced-{secrets.token_hex(4)}")
    rename_noreplace(dest, aside)
    if existing(aside) not in (Existing.FILE, Existing.LINK) or aside.is_dir():
        rename_noreplace(aside, dest)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(dest))
    try:
        rename_noreplace(staged, dest)
    except BaseException:
        rename_noreplace(aside, dest)
        raise
    aside.unlink()


def write_file(
    dest: Path, data: bytes, *, force: bool, mode: int = 0o600, fence: HomeFence | None = None
) -> None:
    """Write ``data`` to ``dest`` under the rules: a staged file, synced, then placed
    with ``mode``.

    The staged file has a name of its own each time, so an old one left by a crash
    is never reused, and it is removed whatever fails.
    """
    check_destination(dest, force=force, fence=fence)
    staged = staging_path(dest)
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        place(staged, dest, force=force, fence=fence)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            staged.unlink()


def staging_path(dest: Path) -> Path:
    """A fresh hidden name next to ``dest`` (same file system, so the rename is atomic)."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.job")


def check_space(what: object, dest: Path, needed: int, free_space: Callable[[Path], int]) -> None:
    """Refuse to start writing ``needed`` bytes next to ``dest`` where they cannot fit.

    Nothing is written or recorded before this, so the same command resumes as
    before once there is room.
    """
    free = free_space(dest.parent)
    if needed > free:
        raise NoSpaceError(
            f"not enough free space for {what} in {dest.parent}: it needs {_size(needed)} "
            f"more and {_size(free)} are free; free some space or choose another -o, then "
            "run the same command again"
        )


def _size(size: int) -> str:
    return f"{size} bytes" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged user may still write on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists, even if only just.

    A plain rename(2) of a directory replaces an empty directory at ``dst``.  Where
    the C library or the file system lacks RENAME_NOREPLACE the check and the rename
    are two steps.
    """
    if _renameat2 is not None:
        result = _renameat2(
            _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(dst))
    if existing(dst) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    src.rename(dst)
