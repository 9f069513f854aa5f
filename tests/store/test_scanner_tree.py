"""The shape of a shared tree: empty directories and executable bits (field test #14, #15)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import Catalog
from p2pshare.store.scanner import empty_directories, scan
from p2pshare.store.shares import ShareStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHUNK = MIN_CHUNK_SIZE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "content", NodeKey.from_seed(bytes(32)), CHUNK)
    catalog.close()


def _tree(tmp_path: Path) -> Path:
    """Nested empty directories, a directory of skipped things only, mixed modes."""
    tree = tmp_path / "tree"
    for rel in ("a/b/c", "d", "e", "links", "pipes", "bin"):
        (tree / rel).mkdir(parents=True)
    (tree / "e" / "f.txt").write_bytes(b"f")
    (tree / "links" / "to-f").symlink_to(tree / "e" / "f.txt")
    os.mkfifo(tree / "pipes" / "fifo")
    for name, mode in (("run", 0o755), ("owner-only", 0o744), ("group-only", 0o654)):
        (tree / "bin" / name).write_bytes(b"#!/bin/sh\n")
        (tree / "bin" / name).chmod(mode)
    (tree / "plain").write_bytes(b"p")
    (tree / "plain").chmod(0o644)
    return tree


def test_only_leaf_empty_directories_are_listed() -> None:
    found = empty_directories(["a", "a/b", "a/b/c", "d", "e", "x"], ["e/f", "x/y/z"])
    assert found == ("a/b/c", "d")


def test_scan_keeps_empty_directories_and_ones_holding_only_skipped_things(
    tmp_path: Path,
) -> None:
    found = scan(_tree(tmp_path), CHUNK)
    assert found.empty_dirs == ("a/b/c", "d", "links", "pipes")
    assert sorted(found.skipped) == [
        ("links/to-f", "symlink"),
        ("pipes/fifo", "not a regular file"),
    ]


def test_scan_shares_the_owner_exec_bit_only(tmp_path: Path) -> None:
    found = scan(_tree(tmp_path), CHUNK)
    executable = {f.rel_path: f.executable for f in found.files}
    assert executable == {
        "bin/group-only": False,
        "bin/owner-only": True,
        "bin/run": True,
        "e/f.txt": False,
        "plain": False,
    }


def test_single_executable_file_share_keeps_its_flag(tmp_path: Path) -> None:
    path = tmp_path / "tool"
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(0o700)
    found = scan(path, CHUNK)
    assert [f.executable for f in found.files] == [True]
    assert found.empty_dirs == ()


@pytest.mark.parametrize("copy", [False, True], ids=["in place", "copy"])
def test_manifest_lists_empty_directories_and_exec_flags(
    store: ShareStore, tmp_path: Path, copy: bool
) -> None:
    prepared = store.prepare(_tree(tmp_path), copy=copy)
    manifest = prepared.signed.manifest
    assert manifest.directories == ("a/b/c", "d", "links", "pipes")
    assert [e.path for e in manifest.entries if e.executable] == ["bin/owner-only", "bin/run"]


def test_empty_directory_colliding_with_a_file_by_case_is_refused(
    store: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "Data").mkdir(parents=True)
    (tree / "data").write_bytes(b"x")
    with pytest.raises(UserError, match=r"cannot share .*letter case"):
        store.prepare(tree)
