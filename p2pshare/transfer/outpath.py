"""Where the output of ``get``, a private get and ``compute run`` may go.

Two rules on top of what :mod:`~p2pshare.transfer.destination` says about the path
itself:

* **Never inside the node's home.**  The home holds the node key, config.toml, the
  catalog and the store; a download or job output written there (``-o`` into it,
  with ``--force`` or not, through a symlink, or through a bind mount or any other
  path to the same directory) could replace the key or the catalog.  A destination
  is refused when the directory it is written in, resolved, is the home or lies
  under it, compared by path and by device and inode of each of its ancestors.  The
  daemon checks every request (not only the CLI), a download resumed at start, and
  every destination again right before the final rename, since a directory may have
  been swapped meanwhile.  What the node itself puts in its store (a private
  share's ciphertext, a job's inputs) is not an output and is not fenced.
* **``-o DIR/`` puts the content inside DIR** under its own name (a share's name,
  or ``MODULE.out`` for a job).  DIR must exist: a missing one is refused, never
  created, and never turned into a file named DIR.  Without the slash an existing
  directory stays refused (docs/transfer.md, "What -o PATH may replace").
* **``-o DIR/`` never replaces anything**, ``--force`` or not.  NAME was picked by
  the share's publisher (or from the module's name), not typed by the user, so an
  existing DIR/NAME is refused, and the refusal offers another name first; replacing
  that file takes ``-o DIR/NAME --force``, where the user names it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from p2pshare.errors import UserError
from p2pshare.proto.errors import UnsafePathError
from p2pshare.proto.manifest import ShareKind
from p2pshare.proto.paths import check_file_name
from p2pshare.transfer.destination import (
    DestinationExistsError,
    Existing,
    check_destination,
    existing,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.proto.manifest import Manifest
    from p2pshare.proto.sealed import PrivateBody

FileId = tuple[int, int]


class OutputInHomeError(UserError):
    """An output would be written inside the node's home."""


@dataclass(frozen=True)
class HomeFence:
    """The node's home, as resolved at start and by device and inode."""

    root: Path
    root_id: FileId

    @classmethod
    def of(cls, home_root: Path) -> HomeFence:
        root = home_root.resolve()
        st = root.stat()
        return cls(root, (st.st_dev, st.st_ino))

    def check(self, dest: Path) -> None:
        """Refuse ``dest`` (absolute) if writing it, or the hidden names the writers
        stage next to it, would write inside the home."""
        if self.holds(dest):
            raise OutputInHomeError(self._refusal(dest))

    def holds(self, dest: Path) -> bool:
        # The writers create and rename entries of dest's directory, so that directory
        # is what counts; dest itself, a link, is replaced and never followed.
        try:
            where = (dest if dest.name == ".." else dest.parent).resolve()
        except (OSError, RuntimeError):
            # A looping link: nothing can be written there anyway.
            return False
        if where.is_relative_to(self.root):
            return True
        for directory in (where, *where.parents):
            try:
                st = directory.stat()
            except OSError:
                continue
            # A bind mount (or a second mount of the same file system) gives the home
            # another path; its device and inode stay the same.
            if (st.st_dev, st.st_ino) == self.root_id:
                return True
        return False

    def _refusal(self, dest: Path) -> str:
        name = dest.name if dest.name not in ("", ".", "..") else "NAME"
        user_home = Path.home()
        suggestion = "a directory of your own"
        for candidate in (user_home / "Downloads" / name, user_home / name):
            if not candidate.is_relative_to(self.root):
                shown = str(candidate)
                if candidate.is_relative_to(user_home):
                    shown = "~/" + str(candidate.relative_to(user_home))
                suggestion = shown
                break
        return (
            f"{dest} is inside this node's home {self.root}, which holds its key, config, "
            "store and catalog, so p2pshare never writes a download or job output there "
            f"(not even with --force); choose a path outside it, such as {suggestion}"
        )


@dataclass(frozen=True)
class UserOutput:
    """How a download the user asked for may write: outside ``fence`` (the node's home),
    and for ``-o DIR/`` (``into_directory``) in DIR under the share's own name."""

    fence: HomeFence | None = None
    into_directory: bool = False

    def check(self, dest: Path, *, force: bool) -> None:
        """Refuse, before anything is fetched, what may not be written."""
        if self.into_directory:
            check_into(dest, self.fence)
        else:
            check_destination(dest, force=force, fence=self.fence)

    def named(self, dest: Path, manifest: Manifest, cid: object) -> Path:
        """``dest``, or for ``-o DIR/`` DIR/NAME once the manifest names the share (checked
        as any destination, and never replaced)."""
        if not self.into_directory:
            return dest
        target = named_in(dest, share_name(manifest, cid), f"share {cid}")
        check_named(target, self.fence)
        return target

    def may_replace(self, *, force: bool) -> bool:
        """Whether the final move may replace what it finds: only a path the user named."""
        return force and not self.into_directory


# What the node writes for itself (a job's inputs): a plain path, no fence.
PLAIN_OUTPUT: Final = UserOutput()


def into_directory(text: str) -> bool:
    """Whether ``-o`` as sent (absolute, normalised) names a directory to put the content
    in: it ends with a slash."""
    return text.endswith("/")


def check_into(directory: Path, fence: HomeFence | None) -> None:
    """Refuse ``-o DIR/`` unless DIR is an existing directory outside the home."""
    if fence is not None:
        fence.check(directory / "NAME")
    check_directory(directory)


def may_replace(destination: str, *, force: bool) -> bool:
    """Whether a request for ``destination`` (as sent) may replace what it finds there:
    ``--force`` on a path the user named, never for ``-o DIR/``."""
    return force and not into_directory(destination)


def check_named(target: Path, fence: HomeFence | None) -> None:
    """Refuse DIR/NAME of ``-o DIR/`` if anything is there, with a hint that replaces
    nothing: the user never typed NAME, so ``--force`` alone must not replace it."""
    if fence is not None:
        fence.check(target)
    try:
        found = existing(target)
    except OSError:
        found = None
    if found in (Existing.FILE, Existing.LINK) and not target.is_dir():
        raise DestinationExistsError(
            f"{target} already exists, and -o {target.parent}/ never replaces anything (not "
            f"even with --force): save it under another name with -o {target.parent}/NEW-NAME; "
            f"to replace {target} itself, name it: -o {target} --force"
        )
    check_destination(target, force=False, fence=fence)


def check_output(target: Path, fence: HomeFence | None, *, into: bool, force: bool) -> None:
    """Refuse writing ``target``: by :func:`check_named` for ``-o DIR/`` (``into``), where
    ``--force`` does not count, else by the rules of the path the user named."""
    if into:
        check_named(target, fence)
    else:
        check_destination(target, force=force, fence=fence)


@contextlib.contextmanager
def named_refusal(target: Path, fence: HomeFence | None, *, into: bool) -> Iterator[None]:
    """For ``-o DIR/`` (``into``), a DestinationExistsError raised inside, at the start
    or at the final move, becomes :func:`check_named`'s refusal, which never suggests
    ``--force`` alone."""
    try:
        yield
    except DestinationExistsError:
        if into:
            check_named(target, fence)
        raise


def check_directory(directory: Path) -> None:
    """Refuse ``-o DIR/`` unless DIR is an existing directory; never create it."""
    shown = f"{directory}/".replace("//", "/")
    if directory.is_dir():
        return
    if not os.path.lexists(directory):
        raise UserError(
            f"{shown} names a directory (it ends with a slash), and {directory} does not "
            f"exist; create it first (mkdir -p {directory}), or drop the slash to save the "
            f"content as {directory} itself"
        )
    raise UserError(
        f"{shown} names a directory (it ends with a slash), and {directory} is not one; "
        "choose an existing directory for -o DIR/, or a new path without the slash"
    )


def named_in(directory: Path, name: str, what: str) -> Path:
    """``directory/name`` for ``-o DIR/``; ``name`` comes from ``what`` (a remote
    publisher's manifest): one safe, visible path component, or refused."""
    try:
        check_file_name(name)
    except UnsafePathError:
        raise UserError(
            f"{what} has no usable name for -o {directory}/; name the output with "
            f"-o {directory}/NAME"
        ) from None
    if name.startswith("."):
        # Chosen by whoever published the share: a hidden name (a shell's .bashrc)
        # is never picked on the user's behalf.
        raise UserError(
            f"{what} is named {name!r}, a hidden name p2pshare never picks on its own for "
            f"-o {directory}/; name the output with -o {directory}/NAME"
        )
    return directory / name


def share_name(manifest: Manifest, cid: object) -> str:
    """The name a share gives itself: its name, or a single file's, else its content ID."""
    if manifest.name is not None:
        return manifest.name
    if manifest.kind is ShareKind.FILE:
        return manifest.entries[0].path
    return str(cid)


def private_name(body: PrivateBody, cid: object) -> str:
    """The name a private share gives itself, which only its recipients learn."""
    if body.name is not None:
        return body.name
    if body.single_file:
        return body.entries[0].path
    return str(cid)


def job_output_name(module: Path) -> str:
    """What ``compute run -o DIR/`` names the output: MODULE.out."""
    return f"{module.stem}.out"
