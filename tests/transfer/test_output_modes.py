"""Modes and tree shape of a finished download (field test #14, #15), on PartialOutput."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, hash_chunks
from p2pshare.proto.manifest import FileEntry, Manifest, ShareKind, build_manifest
from p2pshare.transfer.output import PartialOutput

if TYPE_CHECKING:
    from pathlib import Path

PUBLISHER = bytes(range(32))
FILES = {"bin/run": b"#!/bin/sh\n", "docs/readme": b"read me\n", "top": b""}
EMPTY_DIRS = ("cache/tmp/deep", "logs")


def _manifest(kind: ShareKind = ShareKind.DIRECTORY) -> Manifest:
    files = FILES if kind is ShareKind.DIRECTORY else {"tool": FILES["bin/run"]}
    entries = [
        FileEntry(
            path,
            len(data),
            b"".join(hash_chunks(data, MIN_CHUNK_SIZE)),
            executable=path in ("bin/run", "tool"),
        )
        for path, data in files.items()
    ]
    directories = EMPTY_DIRS if kind is ShareKind.DIRECTORY else ()
    return build_manifest(
        entries,
        kind=kind,
        publisher=PUBLISHER,
        created=0,
        chunk_size=MIN_CHUNK_SIZE,
        directories=directories,
    ).manifest


def _fill(output: PartialOutput) -> None:
    data = {"tool": FILES["bin/run"]} | FILES
    for index, entry in enumerate(output.manifest.entries):
        for global_index in output.manifest.chunks_of(index):
            output.write_chunk(global_index, data[entry.path])


def _modes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): stat.S_IMODE(path.lstat().st_mode)
        for path in [root, *root.rglob("*")]
    }


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_finished_tree_has_the_modes_of_the_users_umask(tmp_path: Path, umask: int) -> None:
    output = PartialOutput(tmp_path / "tree", _manifest(), umask=umask)
    output.open(resume=False)
    _fill(output)
    output.finalize(force=False)
    directory, regular, executable = 0o777 & ~umask, 0o666 & ~umask, 0o777 & ~umask
    assert _modes(tmp_path / "tree") == {
        ".": directory,
        "bin": directory,
        "bin/run": executable,
        "cache": directory,
        "cache/tmp": directory,
        "cache/tmp/deep": directory,
        "docs": directory,
        "docs/readme": regular,
        "logs": directory,
        "top": regular,
    }


def test_partial_tree_stays_private_until_finalized(tmp_path: Path) -> None:
    output = PartialOutput(tmp_path / "tree", _manifest(), umask=0o002)
    output.open(resume=False)
    _fill(output)
    output.sync()
    modes = _modes(output.path)
    assert modes["logs"] == modes["cache/tmp/deep"] == modes["bin"] == 0o700
    assert modes["bin/run"] == modes["docs/readme"] == 0o600
    output.close()


def test_empty_directories_are_created_again_on_resume(tmp_path: Path) -> None:
    output = PartialOutput(tmp_path / "tree", _manifest())
    output.open(resume=False)
    (output.path / "logs").rmdir()
    assert output.open(resume=True)
    assert (output.path / "logs").is_dir()
    output.close()


def test_symlink_planted_as_an_empty_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    output = PartialOutput(tmp_path / "tree", _manifest())
    output.open(resume=False)
    (output.path / "logs").rmdir()
    (output.path / "logs").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="not a directory"):
        output.open(resume=True)
    assert list(outside.iterdir()) == []


def test_single_executable_file_arrives_executable(tmp_path: Path) -> None:
    output = PartialOutput(tmp_path / "tool", _manifest(ShareKind.FILE), umask=0o022)
    output.open(resume=False)
    _fill(output)
    output.finalize(force=False)
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o755
    assert os.access(tmp_path / "tool", os.X_OK)


def test_default_umask_keeps_a_download_private(tmp_path: Path) -> None:
    """A download not handed to a user (a job's input) stays owner-only."""
    output = PartialOutput(tmp_path / "tree", _manifest())
    output.open(resume=False)
    _fill(output)
    output.finalize(force=False)
    modes = _modes(tmp_path / "tree")
    assert modes["docs/readme"] == 0o600
    assert modes["bin/run"] == modes["logs"] == modes["."] == 0o700


def test_tree_of_empty_directories_only_arrives(tmp_path: Path) -> None:
    manifest = build_manifest(
        [],
        kind=ShareKind.DIRECTORY,
        publisher=PUBLISHER,
        created=0,
        directories=["x/y", "z"],
    ).manifest
    output = PartialOutput(tmp_path / "tree", manifest, umask=0o022)
    output.open(resume=False)
    output.finalize(force=False)
    assert _modes(tmp_path / "tree") == {".": 0o755, "x": 0o755, "x/y": 0o755, "z": 0o755}
