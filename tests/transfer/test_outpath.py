"""No output is ever written inside the node's home; ``-o DIR/`` names the output in DIR."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2pshare.errors import UserError
from p2pshare.proto.manifest import ShareKind
from p2pshare.transfer.destination import DestinationExistsError, check_destination, write_file
from p2pshare.transfer.outpath import (
    HomeFence,
    OutputInHomeError,
    UserOutput,
    check_into,
    check_named,
    job_output_name,
    may_replace,
    named_in,
    named_refusal,
    share_name,
)
from tests.transfer.outputs import download, manifest_of

if TYPE_CHECKING:
    from collections.abc import Iterator

FILE = {"f.bin": b"new content"}
TREE = {"a.txt": b"tree a", "sub/b.txt": b"tree b"}


def make_home(root: Path) -> Path:
    home = root / "home"
    (home / "content").mkdir(parents=True)
    (home / "node.key").write_bytes(b"the node key")
    (home / "config.toml").write_bytes(b"[network]\n")
    (home / "content" / "stored.bin").write_bytes(b"stored")
    return home


def snapshot(home: Path) -> dict[str, str]:
    """Every entry under the home, links not followed: name -> what it is or holds."""
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(home))
            if path.is_symlink():
                seen[rel] = "link " + str(path.readlink())
            elif path.is_dir():
                seen[rel] = "dir"
            else:
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path)


@pytest.mark.parametrize("force", [False, True])
def test_the_key_is_never_replaced_even_with_force(tmp_path: Path, home: Path, force: bool) -> None:
    before = snapshot(home)
    fence = HomeFence.of(home)
    with pytest.raises(OutputInHomeError) as refused:
        write_file(home / "node.key", b"job output", force=force, fence=fence)
    assert str(refused.value) == (
        f"{home}/node.key is inside this node's home {home}, which holds its key, config, "
        "store and catalog, so p2pshare never writes a download or job output there (not "
        "even with --force); choose a path outside it, such as ~/Downloads/node.key"
    )
    assert "use --force" not in str(refused.value)
    assert snapshot(home) == before


@pytest.mark.parametrize(
    "where",
    ["home/x", "home/content/x", "home/content/new/x", "link-home/x", "link-root/home/x"],
)
@pytest.mark.parametrize("kind", [ShareKind.FILE, ShareKind.DIRECTORY])
def test_downloads_into_the_home_are_refused_by_every_path(
    tmp_path: Path, home: Path, where: str, kind: ShareKind
) -> None:
    (tmp_path / "link-home").symlink_to(home)
    (tmp_path / "link-root").symlink_to(tmp_path)
    before = snapshot(home)
    fence = HomeFence.of(home)
    dest = tmp_path / where
    with pytest.raises(UserError):
        check_destination(dest, force=True, fence=fence)
    with pytest.raises(UserError):
        write_file(dest, b"out", force=True, fence=fence)
    assert snapshot(home) == before


def test_paths_next_to_the_home_are_allowed(tmp_path: Path, home: Path) -> None:
    fence = HomeFence.of(home)
    # A sibling whose name starts like the home's, a file beside it, a link out of it.
    (tmp_path / "home2").mkdir()
    (home / "out").symlink_to(tmp_path / "home2")
    for dest in (tmp_path / "home2" / "x", tmp_path / "x", home / "out" / "y"):
        write_file(dest, b"out", force=False, fence=fence)
    assert (tmp_path / "home2" / "y").read_bytes() == b"out"


@contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` mounted again at ``target`` (needs root with CAP_SYS_ADMIN)."""
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({mounted.stderr.decode().strip()})")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("force", [False, True])
def test_a_bind_mount_of_the_home_is_the_home(tmp_path: Path, home: Path, force: bool) -> None:
    fence = HomeFence.of(home)
    before = snapshot(home)
    with bind_mount(home, tmp_path / "mnt") as other:
        for dest in (other / "node.key", other / "content" / "x", other / "new"):
            with pytest.raises(OutputInHomeError, match="inside this node's home"):
                download(dest, FILE, ShareKind.FILE, force=force, fence=fence)
    assert snapshot(home) == before


def test_a_directory_swapped_for_a_link_into_the_home_is_refused_at_the_rename(
    tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(home)

    def swap() -> None:
        out.rename(tmp_path / "was-out")
        out.symlink_to(home)

    with pytest.raises(OutputInHomeError):
        download(
            out / "node.key",
            FILE,
            ShareKind.FILE,
            force=True,
            meanwhile=swap,
            fence=HomeFence.of(home),
        )
    assert snapshot(home) == before


# --- the property: whatever the path, nothing lands in the home -------------------------

COMPONENTS = ["home", "out", "link-home", "link-root", "up", "back", "content", "..", "x"]


def tree(root: Path) -> Path:
    """A home, an output directory, and links that lead into, out of and around both."""
    home = make_home(root)
    (root / "out").mkdir()
    (root / "link-home").symlink_to(home)
    (root / "link-root").symlink_to(root)
    (root / "out" / "up").symlink_to("..")
    (home / "back").symlink_to(root / "out")
    (home / "content" / "up").symlink_to("../..")
    return home


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=5),
    name=st.sampled_from(["node.key", "config.toml", "f.bin", "x", "content", "out"]),
    force=st.booleans(),
    kind=st.sampled_from([None, ShareKind.FILE, ShareKind.DIRECTORY]),
    into=st.booleans(),
)
def test_no_output_ever_lands_in_the_home(
    parts: list[str], name: str, force: bool, kind: ShareKind | None, into: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        home = tree(root)
        before = snapshot(home)
        fence = HomeFence.of(home)
        # What the CLI sends: absolute and normalised, a final link not followed.
        dest = Path(os.path.abspath(root.joinpath(*parts, name)))  # noqa: PTH100
        # Enough ".." climb out of the temporary directory, where this test would write
        # into the real file system; every link of the tree points inside it.
        assume(dest.is_relative_to(root))
        try:
            if into:
                check_into(dest.parent, fence)
            if kind is None:
                write_file(dest, b"job output", force=force, fence=fence)
            else:
                download(
                    dest, FILE if kind is ShareKind.FILE else TREE, kind, force=force, fence=fence
                )
        except UserError:
            pass
        else:
            written = dest.parent.resolve() / dest.name
            assert not written.is_relative_to(home)
        assert snapshot(home) == before


# --- -o DIR/ ----------------------------------------------------------------------------


def test_into_a_missing_directory_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "new"
    with pytest.raises(UserError) as refused:
        check_into(missing, None)
    assert str(refused.value) == (
        f"{missing}/ names a directory (it ends with a slash), and {missing} does not exist; "
        f"create it first (mkdir -p {missing}), or drop the slash to save the content as "
        f"{missing} itself"
    )
    assert list(tmp_path.iterdir()) == []


def test_into_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"mine")
    with pytest.raises(UserError, match="is not one; choose an existing directory"):
        check_into(tmp_path / "f", None)
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_into_the_home_is_refused(tmp_path: Path, home: Path) -> None:
    with pytest.raises(OutputInHomeError):
        check_into(home / "content", HomeFence.of(home))


def test_into_a_directory_names_the_output_after_the_share_or_the_module(tmp_path: Path) -> None:
    assert share_name(manifest_of(FILE, ShareKind.FILE), "CID") == "f.bin"
    assert share_name(manifest_of(TREE, ShareKind.DIRECTORY), "CID") == "tree"
    nameless = replace(manifest_of(TREE, ShareKind.DIRECTORY), name=None)
    assert share_name(nameless, "CID") == "CID"
    assert named_in(tmp_path, "f.bin", "share CID") == tmp_path / "f.bin"
    assert job_output_name(Path("/m/wordcount.wat")) == "wordcount.out"


@pytest.mark.parametrize("name", [".bashrc", "..", "a/b", ""])
def test_a_hidden_or_unsafe_share_name_is_never_picked(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match=f"name the output with -o {tmp_path}/NAME"):
        named_in(tmp_path, name, "share X")


@pytest.mark.parametrize("kind", ["file", "link"])
def test_into_a_directory_never_replaces_a_name_the_user_did_not_type(
    tmp_path: Path, kind: str
) -> None:
    # The publisher names the share f.bin; the user's own f.bin (or a link of theirs)
    # is in the directory the user gave with -o DIR/.
    mine = tmp_path / "f.bin"
    if kind == "file":
        mine.write_bytes(b"mine")
    else:
        (tmp_path / "target").write_bytes(b"mine")
        mine.symlink_to(tmp_path / "target")
    output = UserOutput(into_directory=True)
    with pytest.raises(DestinationExistsError) as refused:
        output.named(tmp_path, manifest_of(FILE, ShareKind.FILE), "CID")
    # The first way out replaces nothing; replacing takes the user typing the name.
    assert str(refused.value) == (
        f"{mine} already exists, and -o {tmp_path}/ never replaces anything (not even with "
        f"--force): save it under another name with -o {tmp_path}/NEW-NAME; to replace "
        f"{mine} itself, name it: -o {mine} --force"
    )
    assert "use --force" not in str(refused.value)
    assert mine.read_bytes() == b"mine"
    assert not output.may_replace(force=True)
    assert not may_replace(f"{tmp_path}/", force=True)
    assert may_replace(str(mine), force=True)


def test_into_a_directory_the_final_move_never_replaces_what_appeared(tmp_path: Path) -> None:
    # --force was given with -o DIR/; a file of the user's appears at DIR/NAME meanwhile.
    output = UserOutput(into_directory=True)
    target = output.named(tmp_path, manifest_of(FILE, ShareKind.FILE), "CID")
    with (
        pytest.raises(DestinationExistsError, match="never replaces anything") as refused,
        named_refusal(target, None, into=True),
    ):
        download(
            target,
            FILE,
            ShareKind.FILE,
            force=output.may_replace(force=True),
            meanwhile=lambda: target.write_bytes(b"mine"),
        )
    assert "use --force" not in str(refused.value)
    assert target.read_bytes() == b"mine"


def test_into_the_home_by_name_is_refused_before_any_hint(tmp_path: Path, home: Path) -> None:
    with pytest.raises(OutputInHomeError):
        check_named(home / "node.key", HomeFence.of(home))
    assert (home / "node.key").read_bytes() == b"the node key"
