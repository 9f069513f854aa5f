"""A recipient's plaintext: each sealed chunk authenticated before it is written."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.proto.sealed import TamperedCiphertextError
from p2pshare.proto.transfer import UnknownContentError
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.destination import NoSpaceError
from p2pshare.transfer.outpath import HomeFence, OutputInHomeError
from p2pshare.transfer.private import write_plaintext
from p2pshare.transfer.source import LocalContent

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pshare.proto.sealed import OpenedShare

CHUNK = MIN_CHUNK_SIZE
UMASK = 0o022


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    home = tmp_path / "home"
    home.mkdir()
    catalog = Catalog(home / "catalog.sqlite")
    yield ShareStore(catalog, home / "content", NodeKey.from_seed(bytes(32)), CHUNK)
    catalog.close()


def fence_of(tmp_path: Path) -> HomeFence:
    return HomeFence.of(tmp_path / "home")


def _seal(store: ShareStore, path: Path) -> tuple[Path, OpenedShare]:
    row = store.commit(store.prepare_private(path, []))
    signed = store.signed_manifest(row.cid)
    return store.private_root(signed.cid), store.open_private(signed)


def test_private_tree_decrypts_with_names_modes_and_empty_dirs(
    store: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "src"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "none").mkdir()
    files = {"a/b/big.bin": os.urandom(3 * CHUNK + 7), "run.sh": b"#!/bin/sh\n", "empty": b""}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    (tree / "run.sh").chmod(0o755)
    root, opened = _seal(store, tree)
    dest = tmp_path / "out"
    written = write_plaintext(
        opened, root, dest, force=False, umask=UMASK, fence=fence_of(tmp_path)
    )
    assert written == sum(len(data) for data in files.values())
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / "none").is_dir()
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "empty").stat().st_mode & 0o777 == 0o644


def test_private_single_file_decrypts_to_a_file(store: ShareStore, tmp_path: Path) -> None:
    source = tmp_path / "note.txt"
    source.write_bytes(b"for your eyes only\n")
    root, opened = _seal(store, source)
    dest = tmp_path / "got.txt"
    write_plaintext(opened, root, dest, force=False, umask=UMASK, fence=fence_of(tmp_path))
    assert dest.read_bytes() == b"for your eyes only\n"


def test_tampered_chunk_is_refused_and_no_plaintext_is_left(
    store: ShareStore, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(4 * CHUNK))
    root, opened = _seal(store, source)
    sealed = root / "000000"
    data = bytearray(sealed.read_bytes())
    data[2 * CHUNK + 5] ^= 1
    sealed.chmod(0o600)
    sealed.write_bytes(bytes(data))
    dest = tmp_path / "out.bin"
    with pytest.raises(TamperedCiphertextError, match="chunk 2 "):
        write_plaintext(opened, root, dest, force=False, umask=UMASK, fence=fence_of(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "home"]


def test_plaintext_is_never_written_inside_the_home(store: ShareStore, tmp_path: Path) -> None:
    source = tmp_path / "note.txt"
    source.write_bytes(b"secret\n")
    root, opened = _seal(store, source)
    key = tmp_path / "home" / "node.key"
    key.write_bytes(b"the key")
    with pytest.raises(OutputInHomeError, match="inside this node's home"):
        write_plaintext(opened, root, key, force=True, umask=UMASK, fence=fence_of(tmp_path))
    assert key.read_bytes() == b"the key"
    assert not list((tmp_path / "home").glob(".node.key*"))


def test_plaintext_that_cannot_fit_is_refused_before_a_byte_is_written(
    store: ShareStore, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 * CHUNK))
    root, opened = _seal(store, source)
    dest = tmp_path / "out" / "data.bin"
    dest.parent.mkdir()
    with pytest.raises(NoSpaceError, match="not enough free space for the decrypted share"):
        write_plaintext(
            opened,
            root,
            dest,
            force=False,
            umask=UMASK,
            fence=fence_of(tmp_path),
            free_space=lambda _directory: 3 * CHUNK - 1,
        )
    assert list(dest.parent.iterdir()) == []


FRIEND = NodeKey.from_seed(b"f" * 32).peer_id
STRANGER = NodeKey.from_seed(b"s" * 32).peer_id


def _private(store: ShareStore, tmp_path: Path, *, anyone_may_seed: bool) -> ContentId:
    source = tmp_path / "note.txt"
    source.write_bytes(b"for your eyes only\n")
    prepared = store.prepare_private(source, [FRIEND], anyone_may_seed=anyone_may_seed)
    return ContentId.parse(store.commit(prepared).cid)


def test_recipients_only_private_share_is_unknown_to_peers_not_named(
    store: ShareStore, tmp_path: Path
) -> None:
    cid = _private(store, tmp_path, anyone_may_seed=False)
    local = LocalContent(store)
    assert local.for_peer(FRIEND).signed_manifest(cid)
    with pytest.raises(UnknownContentError):
        local.for_peer(STRANGER).signed_manifest(cid)
    with pytest.raises(UnknownContentError):
        local.for_peer(STRANGER).read_chunk_into(cid, 0, bytearray(1 << 20))


def test_private_share_any_peer_may_seed_is_served_to_strangers(
    store: ShareStore, tmp_path: Path
) -> None:
    cid = _private(store, tmp_path, anyone_may_seed=True)
    assert LocalContent(store).for_peer(STRANGER).read_chunk_into(cid, 0, bytearray(1 << 20))


def test_revoked_share_is_refused_to_everyone_even_when_held_again(
    store: ShareStore, tmp_path: Path
) -> None:
    cid = _private(store, tmp_path, anyone_may_seed=True)
    signed = store.signed_manifest(str(cid))
    root = store.private_root(cid)
    sealed = (root / "000000").read_bytes()
    store.remove(str(cid), revoke=True)
    # Held again (a recipient's copy fetched back, say): still never served.
    root.mkdir(parents=True)
    (root / "000000").write_bytes(sealed)
    store.adopt(signed, (), root)
    assert LocalContent(store).stored.holds(cid)
    local = LocalContent(store)
    for peer in (FRIEND, STRANGER):
        with pytest.raises(UnknownContentError):
            local.for_peer(peer).signed_manifest(cid)
