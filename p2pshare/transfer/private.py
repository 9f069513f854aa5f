"""A recipient's copy of a private share: ciphertext opened chunk by chunk into the destination.

The ciphertext is downloaded like any share (every chunk checked by BLAKE3 against the
signed manifest) into this node's store, from where the node helps seed it.  This
module then authenticates each chunk with its AEAD tag *before* writing its plaintext
to a staged file or tree next to the destination, and places that under the usual
rules of :mod:`~p2pshare.transfer.destination` only once every chunk opened.  On any
failure the staged plaintext is removed: nothing of a share that does not open is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import TYPE_CHECKING

from p2pshare.errors import UserError
from p2pshare.modes import dir_mode, file_mode
from p2pshare.proto.sealed import sealed_entry_name
from p2pshare.transfer.destination import (
    check_destination,
    check_space,
    free_bytes,
    place,
    staging_path,
    sync_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.proto.sealed import OpenedShare
    from p2pshare.transfer.outpath import HomeFence


def plaintext_size(opened: OpenedShare) -> int:
    return sum(entry.size for entry in opened.body.entries)


def write_plaintext(
    opened: OpenedShare,
    sealed_root: Path,
    dest: Path,
    *,
    force: bool,
    umask: int,
    fence: HomeFence | None,
    free_space: Callable[[Path], int] = free_bytes,
) -> int:
    """Decrypt the sealed files under ``sealed_root`` to ``dest`` (outside the home
    ``fence``); the plaintext bytes written.  Refused before anything is written when
    they cannot fit."""
    check_destination(dest, force=force, fence=fence)
    body = opened.body
    check_space("the decrypted share", dest, plaintext_size(opened), free_space)
    staged = staging_path(dest)
    try:
        if body.single_file:
            _decrypt_file(opened, 0, sealed_root, staged)
        else:
            staged.mkdir(mode=0o700)
            for index, entry in enumerate(body.entries):
                target = staged / entry.path
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _decrypt_file(opened, index, sealed_root, target)
            for directory in body.directories:
                (staged / directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        _set_modes(opened, staged, umask)
        place(staged, dest, force=force, fence=fence)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if staged.is_dir() and not staged.is_symlink():
                shutil.rmtree(staged)
            else:
                staged.unlink()
    return plaintext_size(opened)


def _decrypt_file(opened: OpenedShare, index: int, sealed_root: Path, target: Path) -> None:
    size = opened.body.entries[index].size
    with (sealed_root / sealed_entry_name(index)).open("rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            chunk = 0
            written = 0
            while data := src.read(opened.chunk_size):
                # Raises before this chunk's plaintext is written, if it does not open.
                plain = opened.decrypt(index, chunk, data)
                view = memoryview(plain)
                while view:
                    view = view[os.write(fd, view) :]
                written += len(plain)
                chunk += 1
            if written != size:
                raise UserError(f"the stored copy of sealed file {index} is incomplete")
            os.fsync(fd)
        finally:
            os.close(fd)


def _set_modes(opened: OpenedShare, staged: Path, umask: int) -> None:
    body = opened.body
    if body.single_file:
        staged.chmod(file_mode(umask, executable=body.entries[0].executable))
        return
    directories = set(body.directories)
    for entry in body.entries:
        (staged / entry.path).chmod(file_mode(umask, executable=entry.executable))
    for path in [*(entry.path for entry in body.entries), *body.directories]:
        parts = path.split("/")
        directories.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
        (staged / directory).chmod(dir_mode(umask))
        sync_dir(staged / directory)
    staged.chmod(dir_mode(umask))
    sync_dir(staged)
