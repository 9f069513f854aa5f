"""Safe-path policy: every rule explicitly, then fuzzed paths and trees."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import RemoteProtocolError
from p2pshare.proto.errors import UnsafePathError
from p2pshare.proto.paths import (
    MAX_COMPONENT_BYTES,
    MAX_DEPTH,
    MAX_PATH_BYTES,
    check_file_name,
    check_path,
    check_tree,
    fold_path,
    printable,
)

UNSAFE = {
    "empty": "",
    "absolute": "/etc/passwd",
    "root": "/",
    "parent": "..",
    "parent inside": "a/../../b",
    "parent at end": "a/..",
    "current": ".",
    "current inside": "a/./b",
    "empty component": "a//b",
    "trailing slash": "a/",
    "backslash": "a\\b",
    "windows parent": "..\\evil",
    "nul": "a\x00b",
    "newline": "a\nb",
    "escape sequence": "\x1b[31mred",
    "delete": "a\x7f",
    "c1 control": "a\x85b",
    "lone surrogate": "bad\udcff",
    "long component": "a" * (MAX_COMPONENT_BYTES + 1),
    "long component in bytes": "é" * (MAX_COMPONENT_BYTES // 2 + 1),
    "long path": "/".join(["a" * 200] * 21),
    "too deep": "/".join(["d"] * (MAX_DEPTH + 1)),
}

SAFE = [
    "a",
    "a/b/c.txt",
    ".hidden",
    "..dots",
    "dots..",
    "...",
    "file with spaces.txt",
    "colon:and*star?",
    "é/日本語/ファイル",
    "a" * MAX_COMPONENT_BYTES,
    "/".join(["d"] * MAX_DEPTH),
    "/".join(["a" * 255] * 16),
]


@pytest.mark.parametrize("path", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_path_is_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        check_path(path)


@pytest.mark.parametrize("path", SAFE)
def test_safe_path_is_accepted(path: str) -> None:
    check_path(path)
    check_tree([path])


def test_unsafe_path_error_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="absolute"):
        check_path("/abs")


def test_path_of_exactly_the_byte_limit_is_accepted() -> None:
    path = "/".join(["a" * 254] * 16)
    path += "/" + "b" * (MAX_PATH_BYTES - len(path) - 1)
    assert len(path.encode()) == MAX_PATH_BYTES
    check_path(path)
    with pytest.raises(UnsafePathError):
        check_path(path + "b")


TREES_REFUSED = {
    "duplicate": ["a/b", "a/b"],
    "case": ["README", "readme"],
    "case in a directory": ["Docs/a", "docs/b", "docs/a"],
    "unicode normalisation": ["caf\u00e9", "cafe\u0301"],
    "case folding beyond lower()": ["STRASSE", "stra\u00dfe"],
    "file is a directory": ["a", "a/b"],
    "file is a directory, other order": ["a/b/c", "a/b"],
    "file is a directory after folding": ["A", "a/b"],
}


@pytest.mark.parametrize("paths", TREES_REFUSED.values(), ids=TREES_REFUSED.keys())
def test_ambiguous_tree_is_refused(paths: list[str]) -> None:
    with pytest.raises(UnsafePathError):
        check_tree(paths)


def test_clear_tree_is_accepted() -> None:
    check_tree(["a/b", "a/c", "ab", "a.b", "b/a/b", "B2", "empty-dir-sibling"])


# (files, empty directories)
TREES_WITH_DIRECTORIES_REFUSED = {
    "directory is a file": (["a"], ["a"]),
    "directory is a file after folding": (["A"], ["a"]),
    "directory under a file": (["a"], ["a/b"]),
    "directory holding a file": (["a/b"], ["a"]),
    "directory holding a file after folding": (["A/b"], ["a"]),
    "directory holding a directory": ([], ["a", "a/b"]),
    "directory twice": ([], ["d", "d"]),
    "directory case twins": ([], ["D", "d"]),
    "unsafe directory": ([], ["../d"]),
    "absolute directory": ([], ["/d"]),
}


@pytest.mark.parametrize(
    ("files", "directories"),
    TREES_WITH_DIRECTORIES_REFUSED.values(),
    ids=TREES_WITH_DIRECTORIES_REFUSED.keys(),
)
def test_empty_directory_that_collides_or_holds_something_is_refused(
    files: list[str], directories: list[str]
) -> None:
    with pytest.raises(UnsafePathError):
        check_tree(files, directories)


def test_empty_directories_beside_and_under_files_are_accepted() -> None:
    check_tree(["a/b", "c"], ["a/d", "e/f/g", "ab", "c2"])


def test_file_name_is_one_component() -> None:
    check_file_name("share.tar")
    with pytest.raises(UnsafePathError):
        check_file_name("a/b")
    with pytest.raises(UnsafePathError):
        check_file_name("..")


# Characters that exercise the rules far more often than uniform text would.
_TRICKY = st.sampled_from(["a", "B", "b", "/", ".", "\\", "\x00", "\n", "é", "e\u0301", "ß", " "])
paths = st.one_of(st.text(), st.lists(_TRICKY, max_size=12).map("".join))


@given(paths)
def test_fuzzed_path_is_refused_or_stays_inside(path: str) -> None:
    try:
        check_path(path)
    except UnsafePathError:
        return
    encoded = path.encode("utf-8")
    assert 0 < len(encoded) <= MAX_PATH_BYTES
    parts = path.split("/")
    assert all(part not in ("", ".", "..") for part in parts)
    assert len(parts) <= MAX_DEPTH
    assert "\\" not in path
    assert "\x00" not in path
    joined = posixpath.normpath(posixpath.join("/out", path))
    assert joined.startswith("/out/")
    assert joined == "/out/" + path


@given(st.lists(paths, max_size=8))
def test_fuzzed_tree_is_refused_or_unambiguous(tree: list[str]) -> None:
    try:
        check_tree(tree)
    except UnsafePathError:
        return
    keys = [fold_path(path) for path in tree]
    assert len(set(keys)) == len(keys)
    directories = {
        "/".join(key.split("/")[:n]) for key in keys for n in range(1, key.count("/") + 1)
    }
    assert not directories & set(keys)


@given(st.binary(max_size=64))
def test_printable_names_are_utf8_and_keep_every_utf8_name(raw: bytes) -> None:
    name = raw.decode("utf-8", "surrogateescape")
    shown = printable(name)
    shown.encode("utf-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "\\x" in shown
    else:
        assert shown == name


def test_printable_escapes_stray_surrogates_too() -> None:
    assert printable("bad\udcff") == "bad\\xff"
    assert printable("a\ud800\udcff") == "a\\ud800\\udcff"
