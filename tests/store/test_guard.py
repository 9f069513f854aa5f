"""The node never shares or serves its own home: key, catalog, config, log (no daemon)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.home import Home
from p2pshare.identity import NodeKey
from p2pshare.node.init import initialise
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.proto.transfer import NotAvailableError
from p2pshare.store.catalog import Catalog
from p2pshare.store.guard import OTHER_HOME, SECRET_STORE, HomeGuard
from p2pshare.store.shares import ShareStore, StaleShareError
from p2pshare.transfer.source import LocalContent

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHUNK = MIN_CHUNK_SIZE
FRIEND = NodeKey.generate().peer_id


@pytest.fixture
def node_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "user" / "node")
    initialise(home, listen=("/ip4/127.0.0.1/tcp/0",))
    return home


@pytest.fixture
def guarded(node_home: Home) -> Iterator[ShareStore]:
    catalog = Catalog(node_home.catalog_path)
    key = NodeKey.load(node_home.key_path)
    yield ShareStore(catalog, node_home.content_dir, key, CHUNK, HomeGuard.of(node_home))
    catalog.close()


def refusal(store: ShareStore, path: Path) -> str:
    guard = store.guard
    assert guard is not None
    with pytest.raises(UserError) as caught:
        guard.check_share_path(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_share_refuses_the_node_key_by_any_path(guarded: ShareStore, node_home: Home) -> None:
    key = node_home.key_path
    elsewhere = node_home.root.parent / "innocent.pem"
    os.link(key, elsewhere)
    link = node_home.root.parent / "link-to-key"
    link.symlink_to(key)
    dotted = node_home.root / ".." / node_home.root.name / "node.key"
    for path in (key, elsewhere, link, dotted):
        assert "private key" in refusal(guarded, path)
    # A hard link is refused by the scan too, whoever calls it.
    with pytest.raises(UserError, match="private key"):
        guarded.prepare(elsewhere)


def test_share_refuses_the_home_anything_in_it_and_its_parents(
    guarded: ShareStore, node_home: Home
) -> None:
    root = node_home.root
    home_message = refusal(guarded, root)
    assert str(root) in home_message
    assert "share files from outside" in home_message
    (root / "notes.txt").write_text("mine")
    for inside in (node_home.catalog_path, node_home.config_path, root / "notes.txt"):
        assert f"inside the node home {root}" in refusal(guarded, inside)
    for parent in (root.parent, root.parent.parent):
        message = refusal(guarded, parent)
        assert f"contains the node home {root}" in message
        assert "share a directory that does not contain the home instead" in message


def test_walk_refuses_a_directory_that_is_the_home_under_another_path(
    guarded: ShareStore, node_home: Home, tmp_path: Path
) -> None:
    """A bind mount shows the home under another path with the same device and inode."""
    tree = tmp_path / "tree"
    (tree / "mnt").mkdir(parents=True)
    guard = guarded.guard
    assert guard is not None
    bind_mounted = HomeGuard(guard.root, guard.key_path, _file_id(tree / "mnt"), guard.key_id)
    store = ShareStore(guarded.catalog, node_home.content_dir, NodeKey.generate(), CHUNK)
    store.guard = bind_mounted
    with pytest.raises(UserError, match="contains the node home"):
        store.prepare(tree)
    (tree / "mnt" / "key-copy").hardlink_to(node_home.key_path)
    store.guard = guard
    with pytest.raises(UserError, match="private key"):
        store.prepare(tree)


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def test_other_homes_and_secret_stores_are_skipped_dotfiles_are_shared(
    guarded: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "project"
    initialise(Home(tree / "test-node"), listen=("/ip4/127.0.0.1/tcp/0",))
    for rel in (".ssh/id_ed25519", "sub/.gnupg/secring.gpg", ".netrc", "sub/.aws/credentials"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("secret")
    (tree / ".bashrc").write_text("alias ll='ls -l'")
    (tree / "sub" / ".env.example").write_text("PORT=1")
    prepared = guarded.prepare(tree)
    assert sorted(prepared.scan.skipped) == [
        (".netrc", SECRET_STORE),
        (".ssh", SECRET_STORE),
        ("sub/.aws", SECRET_STORE),
        ("sub/.gnupg", SECRET_STORE),
        ("test-node", OTHER_HOME),
    ]
    assert sorted(f.rel_path for f in prepared.scan.files) == [".bashrc", "sub/.env.example"]


def test_share_refuses_another_nodes_home_named_directly(
    guarded: ShareStore, tmp_path: Path
) -> None:
    other = Home(tmp_path / "other")
    initialise(other, listen=("/ip4/127.0.0.1/tcp/0",))
    for path in (other.root, other.key_path):
        assert "another p2pshare node's home" in refusal(guarded, path)


def test_non_utf8_names_are_skipped_and_listed_escaped(guarded: ShareStore, tmp_path: Path) -> None:
    tree = tmp_path / "weird"
    tree.mkdir()
    (tree / "ok.txt").write_text("fine")
    os.mkdir(os.fsencode(tree) + b"/dir\xfe")  # noqa: PTH102 - a bytes path on purpose
    with open(os.fsencode(tree) + b"/bad\xff", "wb") as f:  # noqa: PTH123
        f.write(b"x")
    prepared = guarded.prepare(tree)
    reason = "its name is not valid UTF-8"
    assert sorted(prepared.scan.skipped) == [("bad\\xff", reason), ("dir\\xfe", reason)]
    assert [f.rel_path for f in prepared.scan.files] == ["ok.txt"]
    row = guarded.commit(prepared)
    assert guarded.catalog.share(row.cid) == row


def test_a_catalog_row_pointing_at_the_key_is_never_served(
    node_home: Home, guarded: ShareStore
) -> None:
    """A catalog edited by hand (here: the share an unguarded store made) serves nothing."""
    unguarded = ShareStore(
        guarded.catalog, node_home.content_dir, NodeKey.load(node_home.key_path), CHUNK
    )
    cid = unguarded.commit(unguarded.prepare(node_home.key_path)).cid
    assert unguarded.read_chunk(cid, 0) == node_home.key_path.read_bytes()[:CHUNK]
    with pytest.raises(StaleShareError, match="never served"):
        guarded.read_chunk(cid, 0)
    with pytest.raises(NotAvailableError):
        LocalContent(guarded).read_chunk_into(ContentId.parse(cid), 0, bytearray(CHUNK))
    row = guarded.catalog.share(cid)
    assert row is not None
    assert row.stale_reason


def test_a_catalog_row_pointing_into_the_home_is_never_served(
    node_home: Home, guarded: ShareStore
) -> None:
    unguarded = ShareStore(guarded.catalog, node_home.content_dir, NodeKey.generate(), CHUNK)
    cid = unguarded.commit(unguarded.prepare(node_home.config_path)).cid
    with pytest.raises(StaleShareError, match="never served"):
        guarded.read_chunk(cid, 0)


def test_stored_copies_in_the_home_are_still_served(guarded: ShareStore, tmp_path: Path) -> None:
    data = tmp_path / "report.txt"
    data.write_bytes(b"r" * (CHUNK + 3))
    row = guarded.commit(guarded.prepare(data, copy=True))
    assert guarded.guard is not None
    assert row.root.startswith(f"{guarded.guard.root}/content/")
    assert guarded.read_chunk(row.cid, 1) == b"rrr"
    assert row.origin == str(data)


def test_what_a_share_skipped_and_where_a_copy_came_from_survive_a_restart(
    guarded: ShareStore, node_home: Home, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a")
    (tree / "link").symlink_to(tree / "a")
    row = guarded.commit(guarded.prepare(tree, copy=True))
    guarded.catalog.close()
    reopened = Catalog(node_home.catalog_path)
    again = reopened.share(row.cid)
    reopened.close()
    assert again is not None
    assert again.skipped == (("link", "symlink"),)
    assert again.origin == str(tree)
    assert again.root != again.origin


PEM_KEY = (
    b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"
)
PEM_CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("rel", "content", "reason"),
    [
        ("id_rsa", b"anything", "it is named like an SSH private key"),
        ("keys/id_ed25519", b"anything", "it is named like an SSH private key"),
        ("tls/server.key", b"junk\n" + PEM_KEY, "it holds a PRIVATE KEY block"),
        ("bundle.pem", PEM_CERT + PEM_KEY, "it holds a PRIVATE KEY block"),
        (".ssh/config", b"Host *\n", "it is inside a .ssh directory"),
    ],
)
def test_share_of_what_looks_like_a_private_key_asks_for_yes(
    guarded: ShareStore, tmp_path: Path, rel: str, content: bytes, reason: str
) -> None:
    file = tmp_path / "mine" / rel
    file.parent.mkdir(parents=True)
    file.write_bytes(content)
    # The file named itself, and the directory holding it, shared publicly or privately.
    top = tmp_path / "mine" / rel.split("/", maxsplit=1)[0]
    prepares = (guarded.prepare, lambda path: guarded.prepare_private(path, [FRIEND]))
    for named in {file, top}:
        for prepare in prepares:
            with pytest.raises(UserError) as caught:
                prepare(named)
            assert str(caught.value) == (
                f"cannot share {named}: {file} looks like a private key ({reason}); "
                "if you mean to publish it, share it again with --yes"
            )
    assert not list(guarded.catalog.shares())
    assert guarded.commit(guarded.prepare(file, confirmed=True)).file_count == 1


def test_certificates_and_ordinary_key_named_files_are_shared_without_yes(
    guarded: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "site"
    tree.mkdir()
    (tree / "cert.pem").write_bytes(PEM_CERT)
    (tree / "piano.key").write_bytes(b"C major\n")
    (tree / "id_rsa.pub").write_bytes(b"ssh-ed25519 AAAA me@host\n")
    assert guarded.commit(guarded.prepare(tree)).file_count == 3
