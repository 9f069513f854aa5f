"""What get -o and compute run -o may do to an existing path (field test #1, #13)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.proto.manifest import ShareKind
from p2pshare.transfer.destination import (
    DestinationExistsError,
    check_destination,
    rename_noreplace,
    write_file,
)
from p2pshare.transfer.output import PartialOutput, partial_path
from tests.transfer.outputs import download, manifest_of

if TYPE_CHECKING:
    from pathlib import Path

FILE = {"f.bin": b"new content"}
TREE = {"a.txt": b"tree a", "sub/b.txt": b"tree b"}


def victim(root: Path) -> Path:
    """Field test #1: a directory with something precious in it."""
    (root / "victim" / "sub").mkdir(parents=True)
    (root / "victim" / "important.doc").write_bytes(b"precious")
    return root / "victim"


@pytest.mark.parametrize("kind", [ShareKind.FILE, ShareKind.DIRECTORY])
@pytest.mark.parametrize("force", [False, True])
def test_an_existing_directory_is_never_replaced(
    tmp_path: Path, kind: ShareKind, force: bool
) -> None:
    dest = victim(tmp_path)
    files = FILE if kind is ShareKind.FILE else TREE
    with pytest.raises(DestinationExistsError) as refused:
        download(dest, files, kind, force=force)
    assert str(refused.value) == (
        f"{dest} is an existing directory, which p2pshare never replaces or writes into "
        f"(not even with --force); choose a new path for -o, such as {dest}/NAME"
    )
    assert (dest / "important.doc").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_the_hint_for_a_directory_never_suggests_force(tmp_path: Path) -> None:
    dest = victim(tmp_path)
    with pytest.raises(DestinationExistsError) as refused:
        check_destination(dest, force=False)
    assert "use --force" not in str(refused.value)


def test_the_working_directory_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Field test #1: `cd scratch1/inner; get CID -o . --force`."""
    inner = tmp_path / "scratch1" / "inner"
    inner.mkdir(parents=True)
    (inner / "keep").write_bytes(b"keep")
    monkeypatch.chdir(inner)
    dest = tmp_path / "scratch1" / "inner"
    with pytest.raises(DestinationExistsError):
        download(dest, FILE, ShareKind.FILE, force=True)
    assert (inner / "keep").read_bytes() == b"keep"


def test_a_path_without_a_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not name a file"):
        check_destination(tmp_path / "x" / "..", force=True)


def test_force_replaces_a_regular_file_by_one_rename(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    manifest = manifest_of(FILE, ShareKind.FILE)
    output = PartialOutput(dest, manifest)
    output.open(resume=False)
    output.write_chunk(0, FILE["f.bin"])
    staged_inode = output.path.stat().st_ino
    output.finalize(force=True)
    # The very file that was written now has the name: renamed over the old one.
    assert dest.stat().st_ino == staged_inode
    assert dest.read_bytes() == FILE["f.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_without_force_a_file_is_kept_and_the_hint_is_force(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DestinationExistsError, match="already exists; use --force to replace it"):
        download(dest, FILE, ShareKind.FILE, force=False)
    assert dest.read_bytes() == b"old"


@pytest.mark.parametrize("kind", [ShareKind.FILE, ShareKind.DIRECTORY])
def test_force_replaces_a_symlink_itself_never_its_target(tmp_path: Path, kind: ShareKind) -> None:
    target_file = tmp_path / "precious.txt"
    target_file.write_bytes(b"precious")
    files = FILE if kind is ShareKind.FILE else TREE
    for name, points_to in (("to-file", target_file), ("dangling", tmp_path / "nothing")):
        link = tmp_path / name
        link.symlink_to(points_to)
        with pytest.raises(DestinationExistsError, match="use --force to replace the link"):
            download(link, files, kind, force=False)
        download(link, files, kind, force=True)
        assert not link.is_symlink()
    assert target_file.read_bytes() == b"precious"
    assert not (tmp_path / "nothing").exists()
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("kind", [ShareKind.FILE, ShareKind.DIRECTORY])
@pytest.mark.parametrize("force", [False, True])
def test_a_symlink_to_a_directory_is_never_replaced(
    tmp_path: Path, kind: ShareKind, force: bool
) -> None:
    """Replacing it would make the user think their directory was replaced; the hint
    never suggests --force."""
    target = victim(tmp_path)
    link = tmp_path / "to-dir"
    link.symlink_to(target)
    files = FILE if kind is ShareKind.FILE else TREE
    with pytest.raises(DestinationExistsError) as refused:
        download(link, files, kind, force=force)
    assert str(refused.value) == (
        f"{link} is a symbolic link to a directory, which p2pshare never replaces (not even "
        f"with --force); choose a new path for -o, such as {link}/NAME"
    )
    assert link.is_symlink()
    assert link.resolve() == target
    assert sorted(p.name for p in target.iterdir()) == ["important.doc", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["to-dir", "victim"]


@pytest.mark.parametrize("force", [False, True])
def test_a_job_output_onto_a_symlink_to_a_directory_is_refused(tmp_path: Path, force: bool) -> None:
    target = victim(tmp_path)
    link = tmp_path / "to-dir"
    link.symlink_to(target)
    with pytest.raises(DestinationExistsError, match="symbolic link to a directory"):
        write_file(link, b"out", force=force)
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["to-dir", "victim"]


def test_a_directory_share_replaces_a_file_with_force_and_leaves_nothing_aside(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "tree"
    dest.write_bytes(b"old file")
    download(dest, TREE, ShareKind.DIRECTORY, force=True)
    assert (dest / "sub" / "b.txt").read_bytes() == b"tree b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


@pytest.mark.parametrize("kind", [ShareKind.FILE, ShareKind.DIRECTORY])
def test_a_directory_that_appears_during_the_download_is_not_replaced(
    tmp_path: Path, kind: ShareKind
) -> None:
    dest = tmp_path / "out"
    files = FILE if kind is ShareKind.FILE else TREE

    def appear() -> None:
        # Empty: the one kind of directory a plain rename(2) would silently replace.
        dest.mkdir()

    with pytest.raises(DestinationExistsError, match="is an existing directory"):
        download(dest, files, kind, force=True, meanwhile=appear)
    assert dest.is_dir()
    assert not any(dest.iterdir())
    # The finished partial stays, so the same get completes once the path is free.
    assert partial_path(dest).exists()


def test_a_file_that_appears_during_the_download_is_kept_without_force(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(DestinationExistsError, match="use --force"):
        download(
            dest, FILE, ShareKind.FILE, force=False, meanwhile=lambda: dest.write_bytes(b"mine")
        )
    assert dest.read_bytes() == b"mine"


def test_rename_noreplace_never_replaces_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "src").is_dir()


def test_a_partial_this_node_did_not_write_is_neither_reused_nor_removed(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "out"
    planted = partial_path(dest)
    planted.mkdir()
    (planted / "theirs").write_bytes(b"theirs")
    output = PartialOutput(dest, manifest_of(TREE, ShareKind.DIRECTORY))
    with pytest.raises(UserError, match="is in the way of the download"):
        output.open(resume=False)
    assert (planted / "theirs").read_bytes() == b"theirs"


@pytest.mark.parametrize("force", [False, True])
def test_a_job_output_onto_a_directory_is_refused_and_leaves_no_stray_file(
    tmp_path: Path, force: bool
) -> None:
    """Field test #13: `compute run -o victim2 --force` left `.victim2.job` behind."""
    dest = victim(tmp_path)
    with pytest.raises(DestinationExistsError, match="is an existing directory"):
        write_file(dest, b"3 9 43\n", force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    assert (dest / "important.doc").read_bytes() == b"precious"


def test_a_job_output_that_fails_to_write_leaves_no_stray_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(_fd: int) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match="No space left on device"):
        write_file(tmp_path / "out.txt", b"data", force=False)
    assert list(tmp_path.iterdir()) == []


def test_a_job_output_replaces_a_file_with_force(tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old")
    with pytest.raises(DestinationExistsError, match="use --force"):
        write_file(dest, b"new", force=False)
    write_file(dest, b"new", force=True)
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
