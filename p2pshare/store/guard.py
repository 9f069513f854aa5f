"""What a node must never publish or serve: its own home, above all its private key.

The home holds the node key (whoever has it *is* the node), the catalog, the config,
the log and the control socket.  Three places use this module (docs/store.md):

* ``share`` refuses the key file, the home or anything inside it, and any directory
  that contains the home.  Paths are compared resolved (symlinks, ``..``), and by
  device and inode too, so a hard link to the key or a bind-mounted path into the
  home is refused as well;
* the directory walk refuses a directory that turns out to be the home (reached
  through a bind mount) or a file that is the key, and skips what it must not
  publish on the user's behalf: other p2pshare homes and well-known secret stores;
* the uploader checks every file it opens, so a share recorded by hand in the
  catalog still cannot serve the key or the home (defence in depth).

The home's ``content/`` (stored snapshots) and ``compute/`` (built modules, job
files) hold what the node itself publishes and may be served; nothing else in the
home may.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from p2pshare.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from p2pshare.home import Home

# A directory holding both is a p2pshare node home (p2pshare.home.Home).
HOME_MARKERS: Final = frozenset({"node.key", "config.toml"})
# Skipped inside a shared directory, at any depth: the places where common tools keep
# credentials.  A user who names one of them on the command line still can share it.
SECRET_DIRS: Final = frozenset(
    {".ssh", ".gnupg", ".password-store", ".aws", ".azure", ".kube", ".docker"}
)
SECRET_FILES: Final = frozenset({".netrc", ".pgpass", ".git-credentials", ".pypirc", ".npmrc"})
SECRET_STORE: Final = "a well-known store of credentials, never shared from a directory"  # noqa: S105
OTHER_HOME: Final = "another p2pshare node's home, which holds its private key"
_SERVABLE_DIRS: Final = ("content", "compute")

FileId = tuple[int, int]

# What `share` and `compute run` ask the user to confirm with --yes: files that look like
# private keys.
SSH_KEY_NAMES: Final = frozenset(
    {"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", "identity"}
)
KEY_SUFFIXES: Final = frozenset({".pem", ".key"})
# A PEM bundle may hold certificates before its key; keys and bundles are small.
KEY_HEAD_BYTES: Final = 64 << 10
_PRIVATE_KEY_BLOCK: Final = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def file_id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino)


def is_home_listing(names: set[str] | frozenset[str]) -> bool:
    """Does a directory holding ``names`` look like a p2pshare node home?"""
    return names >= HOME_MARKERS


@dataclass(frozen=True)
class HomeGuard:
    """The identity of one node's home and key, and the checks made against them."""

    root: Path
    key_path: Path
    root_id: FileId
    # The key this daemon runs with.  A key written later (`init --force`) is in the
    # home, where nothing is served anyway.
    key_id: FileId | None

    @classmethod
    def of(cls, home: Home) -> HomeGuard:
        root = home.root.resolve()
        key_path = root / home.key_path.name
        try:
            key_id: FileId | None = file_id(key_path.stat())
        except OSError:
            key_id = None
        return cls(root, key_path, file_id(root.stat()), key_id)

    # -- share

    def check_share_path(self, path: Path) -> None:
        """Refuse ``path`` (as the user named it) if sharing it would publish the home."""
        try:
            real = path.resolve(strict=True)
            st = real.stat()
        except OSError:
            return  # the scan says why it cannot be read
        if file_id(st) == self.key_id:
            raise self.key_refusal(path)
        if file_id(st) == self.root_id:
            raise UserError(
                f"cannot share {path}: it is the node home, which holds the node's private key; "
                f"share files from outside {self.root} instead"
            )
        if self._inside_home(real):
            raise UserError(
                f"cannot share {path}: it is inside the node home {self.root}, which holds the "
                "node's private key and catalog; share files from outside the home instead"
            )
        if stat.S_ISDIR(st.st_mode) and self.root.is_relative_to(real):
            raise self.contains_refusal(path)
        for parent in (real, *real.parents) if stat.S_ISDIR(st.st_mode) else real.parents:
            if _looks_like_home(parent):
                raise UserError(
                    f"cannot share {path}: {parent} is another p2pshare node's home, which "
                    "holds that node's private key; share files from outside it instead"
                )

    def _inside_home(self, real: Path) -> bool:
        if real.is_relative_to(self.root):
            return True
        # A bind mount gives the home a second path; its device and inode stay the same.
        for parent in real.parents:
            try:
                if file_id(parent.stat()) == self.root_id:
                    return True
            except OSError:
                continue
        return False

    def key_refusal(self, path: Path) -> UserError:
        return UserError(
            f"cannot share {path}: it is this node's private key (the file {self.key_path}), "
            "which would let anyone impersonate the node; share your own files instead"
        )

    def contains_refusal(self, path: Path) -> UserError:
        return UserError(
            f"cannot share {path}: it contains the node home {self.root}, whose private key "
            "would be shared with it; share a directory that does not contain the home instead "
            "(its other subdirectories), or keep the home elsewhere with --home"
        )

    # -- serve

    def may_serve(self, fd: int, path: Path, st: os.stat_result) -> bool:
        """May the uploader send bytes of ``fd``, opened from ``path`` (``st``: its fstat)?

        Runs for every chunk served, so it compares strings, not pathlib paths
        (107 us per call with pathlib and a stat of the key here; 14 us, one readlink).
        """
        if file_id(st) == self.key_id:
            return False
        real = _real_path_of(fd, path)
        root = str(self.root)
        if not real.startswith(root + os.sep):
            return True
        inside = real[len(root) + 1 :]
        return any(inside.startswith(name + os.sep) for name in _SERVABLE_DIRS)


def private_key_reason(path: Path) -> str | None:
    """Why the file at ``path`` (resolved) looks like a private key; None if it does not."""
    if ".ssh" in path.parts[:-1]:
        return "it is inside a .ssh directory"
    if path.name in SSH_KEY_NAMES:
        return "it is named like an SSH private key"
    if path.suffix.lower() in KEY_SUFFIXES:
        try:
            with path.open("rb") as f:
                head = f.read(KEY_HEAD_BYTES)
        except OSError:
            return None  # the hashing that follows says why it cannot be read
        if _PRIVATE_KEY_BLOCK.search(head):
            return "it holds a PRIVATE KEY block"
    return None


def check_no_private_keys(named: Path, files: Iterable[Path]) -> None:
    """Refuse a share (``named``, as the user gave it) holding a file that looks like a
    private key: published, it could never be taken back.  ``--yes`` skips this."""
    for file in files:
        reason = private_key_reason(file)
        if reason is not None:
            raise UserError(
                f"cannot share {named}: {file} looks like a private key ({reason}); "
                "if you mean to publish it, share it again with --yes"
            )


def check_job_file(path: Path) -> None:
    """Refuse a file the user named for a compute job (its module, ``--stdin``, an
    ``--input``) that looks like a private key: the job sends it to other nodes, its
    workers, as ``share`` would publish it.  ``--yes`` skips this."""
    reason = private_key_reason(path.resolve())
    if reason is not None:
        raise UserError(
            f"cannot run the job: {path} looks like a private key ({reason}), and a job's "
            "files are sent to its workers; if you mean to send it, run the job again with --yes"
        )


def _looks_like_home(directory: Path) -> bool:
    return all((directory / name).is_file() for name in HOME_MARKERS)


def _real_path_of(fd: int, path: Path) -> str:
    """The path of what ``fd`` is open on: what was opened, whatever the name now means."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 - a str is what is compared
    except OSError:
        return os.path.realpath(path)
