"""Property: finishing a download or writing a job output touches nothing but its own.

For any layout of files, directories and symbolic links, any ``-o`` target in or
around it (the layout's root, ``.``, ``..``, a directory holding other files, a
file, a link, a path under a file, the partial's own name), with and without
``--force``, and something possibly appearing at the target during the download:
every byte, link and directory that existed before is unchanged afterwards, except
the one regular file or link the command was asked to replace; and nothing is left
behind but the content at the target (or, when the final move was refused, the
partial that a rerun resumes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pshare.errors import UserError
from p2pshare.proto.manifest import ShareKind
from p2pshare.transfer.destination import write_file
from p2pshare.transfer.output import partial_path
from tests.transfer.outputs import download

NAMES = ["a", "b", "sub", ".a.p2pshare-partial", ".new.p2pshare-partial"]
LINK_TARGETS = ["a", "sub", "missing", "../outside", "../outside/kept"]
TARGETS = ["", ".", "..", "a", "b", "sub", "sub/a", "new", "sub/new", "a/new", "link"]
FILE = {"f.bin": b"downloaded"}
TREE = {"x.txt": b"tree x", "d/y.txt": b"tree y"}

Layout = dict[str, Any]

leaf = st.one_of(
    st.binary(max_size=8).map(lambda b: ("file", b)),
    st.sampled_from(LINK_TARGETS).map(lambda t: ("link", t)),
)
layouts: st.SearchStrategy[Layout] = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), leaf, max_size=3),
    lambda inner: st.dictionaries(
        st.sampled_from(NAMES), st.one_of(leaf, inner.map(lambda d: ("dir", d))), max_size=3
    ),
    max_leaves=8,
)


def build(root: Path, layout: Layout) -> None:
    root.mkdir(exist_ok=True)
    for name, (kind, value) in layout.items():
        path = root / name
        if kind == "file":
            path.write_bytes(value)
        elif kind == "link":
            path.symlink_to(value)
        else:
            build(path, value)


def snapshot(top: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """Everything under ``top``, links not followed."""
    seen: dict[str, tuple[str, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            if path.is_symlink():
                seen[rel] = ("link", str(path.readlink()))
            elif path.is_dir():
                seen[rel] = ("dir", None)
            else:
                seen[rel] = ("file", path.read_bytes())
    return seen


def under(rel: str, top: str) -> bool:
    return rel == top or rel.startswith(top + "/")


@settings(max_examples=150, deadline=None)
@given(
    layout=layouts,
    target=st.sampled_from(TARGETS),
    force=st.booleans(),
    what=st.sampled_from(["file", "tree", "job output"]),
    appears=st.sampled_from([None, "empty dir", "dir", "file"]),
)
def test_an_output_changes_nothing_but_its_target(
    layout: Layout, target: str, force: bool, what: str, appears: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        (top / "outside").mkdir()
        (top / "outside" / "kept").write_bytes(b"kept")
        root = top / "work"
        build(root, layout | {"link": ("link", "sub")} if "link" not in layout else layout)
        # As the CLI sends it: absolute and normalised, a link at the end not followed.
        dest = Path(os.path.abspath(root / target))  # noqa: PTH100
        # Where it lands: a link among the parents is the user's own way to that place.
        real = dest if dest == top else Path(os.path.realpath(dest.parent)) / dest.name
        rel_dest = str(real.relative_to(top)) if real != top else "."
        before = snapshot(top)
        replaceable = before.get(rel_dest, ("", None))[0] in ("file", "link")

        def meanwhile() -> None:
            if appears is None or os.path.lexists(dest) or not dest.parent.is_dir():
                return
            if appears == "file":
                dest.write_bytes(b"appeared")
            else:
                dest.mkdir()
                if appears == "dir":
                    (dest / "inside").write_bytes(b"inside")
            before.update(
                {rel: entry for rel, entry in snapshot(top).items() if under(rel, rel_dest)}
            )
            nonlocal replaceable
            replaceable = appears == "file"

        done = False
        try:
            if what == "job output":
                meanwhile()
                write_file(dest, b"job output", force=force)
            else:
                kind = ShareKind.FILE if what == "file" else ShareKind.DIRECTORY
                files = FILE if what == "file" else TREE
                download(dest, files, kind, force=force, meanwhile=meanwhile)
            done = True
        except UserError:
            pass
        after = snapshot(top)

        for rel, entry in before.items():
            if done and force and replaceable and under(rel, rel_dest):
                continue
            assert after.get(rel) == entry, (rel, entry, after.get(rel))
        created = {rel for rel in after if rel not in before}
        if done:
            assert (replaceable and force) or rel_dest not in before
            assert all(under(rel, rel_dest) for rel in created), created
        else:
            # Only the finished partial may stay, for the rerun to resume.
            partial = str(partial_path(real).relative_to(top)) if real != top else ""
            assert all(partial and under(rel, partial) for rel in created), created
