"""Safe-path policy for the entries of a share (docs/protocol.md, "Safe paths").

A receiver joins each entry path under its output directory, so a path must not be
able to name anything outside it, and the tree must come out the same on every file
system a receiver may use: case-insensitive ones (macOS, Windows) and ones that
normalise Unicode (macOS) included.  Publishers refuse such trees when sharing,
receivers refuse them again when decoding, so neither side trusts the other.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

from p2pshare.proto.errors import UnsafePathError

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 64
_SHOWN_CHARS = 120
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _show(path: str) -> str:
    shown = path if len(path) <= _SHOWN_CHARS else path[:_SHOWN_CHARS] + "..."
    return repr(shown)


def printable(text: str) -> str:
    """``text`` as valid UTF-8, its undecodable bytes shown as escapes (``bad\\xff``).

    Python gives a file name that is not UTF-8 lone surrogates (PEP 383), which no
    UTF-8 encoder accepts; this is the form such a name takes in messages and replies.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def has_control_character(text: str) -> bool:
    """True if ``text`` holds a C0, DEL or C1 control character.

    NUL ends C strings; the others can rewrite the terminal that prints a name
    (escape sequences) or hide a line break inside it.
    """
    return _CONTROL_CHARACTER.search(text) is not None


def check_path(path: str) -> None:
    """Raise UnsafePathError unless ``path`` is a safe relative POSIX file path."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: a name that was not valid UTF-8 on the publisher's disk.
        raise UnsafePathError(f"path {_show(path)} is not valid UTF-8") from None
    if not path:
        raise UnsafePathError("a path cannot be empty")
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePathError(
            f"path {_show(path)} has {len(encoded)} bytes, more than {MAX_PATH_BYTES}"
        )
    if path.startswith("/"):
        raise UnsafePathError(f"path {_show(path)} is absolute; share paths are relative")
    if "\\" in path:
        # A separator on Windows: "a\\b" would turn into a different tree there.
        raise UnsafePathError(f"path {_show(path)} contains a backslash")
    if has_control_character(path):
        raise UnsafePathError(f"path {_show(path)} contains a control character")
    components = path.split("/")
    if len(components) > MAX_DEPTH:
        raise UnsafePathError(
            f"path {_show(path)} is {len(components)} levels deep, more than {MAX_DEPTH}"
        )
    for component in components:
        if component in ("", ".", ".."):
            raise UnsafePathError(
                f"path {_show(path)} has an empty, '.' or '..' component; "
                "paths must be normalised and stay inside the share"
            )
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(
                f"path {_show(path)} has a component longer than {MAX_COMPONENT_BYTES} bytes"
            )


def check_file_name(name: str) -> None:
    """Raise UnsafePathError unless ``name`` is one safe path component (no ``/``)."""
    check_path(name)
    if "/" in name:
        raise UnsafePathError(f"name {_show(name)} must be a single path component")


def fold_path(path: str) -> str:
    """The key under which two paths land on the same file on some receiver's disk."""
    return "/".join(
        unicodedata.normalize("NFC", unicodedata.normalize("NFC", part).casefold())
        for part in path.split("/")
    )


def check_tree(paths: Iterable[str], empty_directories: Iterable[str] = ()) -> None:
    """Raise UnsafePathError unless every path is safe and the set makes one clear tree.

    ``paths`` are files, ``empty_directories`` directories that hold nothing.  Refused
    beyond :func:`check_path`: duplicates, paths equal after NFC normalisation and case
    folding (a file and a directory included), a file path that is also a directory
    of another entry, and an "empty" directory that holds a file or another directory.
    """
    leaves: dict[str, str] = {}
    empty: set[str] = set()
    parents: dict[str, str] = {}
    listed = [(path, False) for path in paths] + [(path, True) for path in empty_directories]
    for path, is_directory in listed:
        check_path(path)
        key = fold_path(path)
        other = leaves.get(key)
        if other is not None:
            if other == path and (is_directory or key in empty):
                raise UnsafePathError(
                    f"path {_show(path)} is listed both as a file and as an empty directory"
                )
            if other == path:
                raise UnsafePathError(f"path {_show(path)} appears twice")
            raise UnsafePathError(
                f"paths {_show(other)} and {_show(path)} differ only in letter case or "
                "Unicode normalisation, so they would collide on some file systems"
            )
        leaves[key] = path
        if is_directory:
            empty.add(key)
        parts = key.split("/")
        for depth in range(1, len(parts)):
            parents.setdefault("/".join(parts[:depth]), path)
    for key, path in leaves.items():
        child = parents.get(key)
        if child is None:
            continue
        if key in empty:
            raise UnsafePathError(
                f"directory {_show(path)} is listed as empty but holds {_show(child)}"
            )
        raise UnsafePathError(
            f"path {_show(path)} is a file but also a directory holding {_show(child)}"
        )
