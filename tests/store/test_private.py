"""Private shares in the store: sealed into the home, readable by the named peers only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.sealed import NotARecipientError, open_envelope
from p2pshare.store.catalog import Catalog, PrivateShare
from p2pshare.store.shares import ShareStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pshare.proto.sealed import OpenedShare
    from p2pshare.proto.signed_manifest import SignedManifest

CHUNK = MIN_CHUNK_SIZE
SHARER = NodeKey.from_seed(bytes(32))
FRIEND = NodeKey.from_seed(b"f" * 32)
STRANGER = NodeKey.from_seed(b"s" * 32)
SECRET = b"the launch code is 0000\n" * 2000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "content", SHARER, CHUNK)
    catalog.close()


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "plans"
    (tree / "inner").mkdir(parents=True)
    (tree / "inner" / "secret-plan.txt").write_bytes(SECRET)
    (tree / "empty.txt").write_bytes(b"")
    return tree


def _share(store: ShareStore, path: Path, recipients: list[str]) -> SignedManifest:
    row = store.commit(store.prepare_private(path, recipients, name="plans"))
    return store.signed_manifest(row.cid)


def _open(signed: SignedManifest, key: NodeKey) -> OpenedShare:
    manifest = signed.manifest
    assert manifest.sealed is not None
    sizes = [entry.size for entry in manifest.entries]
    return open_envelope(manifest.sealed, key.seed, sizes, manifest.chunk_size)


def test_private_share_publishes_no_name_and_no_plaintext(
    store: ShareStore, tmp_path: Path
) -> None:
    signed = _share(store, _tree(tmp_path), [FRIEND.peer_id])
    assert [entry.path for entry in signed.manifest.entries] == ["000000", "000001"]
    assert signed.manifest.name is None
    assert b"secret-plan" not in signed.data
    assert b"plans" not in signed.data
    served = b"".join(
        store.read_chunk(str(signed.cid), i) for i in range(signed.manifest.total_chunks)
    )
    assert b"launch code" not in served
    assert len(served) > len(SECRET)


def test_named_recipient_and_sharer_open_the_file_list(store: ShareStore, tmp_path: Path) -> None:
    signed = _share(store, _tree(tmp_path), [FRIEND.peer_id])
    for key in (FRIEND, SHARER):
        opened = _open(signed, key)
        assert [e.path for e in opened.body.entries] == ["empty.txt", "inner/secret-plan.txt"]
    assert store.open_private(signed).body.name == "plans"


def test_peer_not_named_cannot_open_it(store: ShareStore, tmp_path: Path) -> None:
    signed = _share(store, _tree(tmp_path), [FRIEND.peer_id])
    with pytest.raises(NotARecipientError):
        _open(signed, STRANGER)


def test_catalog_records_whom_a_private_share_is_for(store: ShareStore, tmp_path: Path) -> None:
    signed = _share(store, _tree(tmp_path), [FRIEND.peer_id])
    expected = tuple(sorted([SHARER.peer_id, FRIEND.peer_id]))
    assert store.catalog.private_shares() == {str(signed.cid): PrivateShare(expected, False)}


def test_sharing_privately_twice_gives_new_content_ids(store: ShareStore, tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert _share(store, tree, [FRIEND.peer_id]).cid != _share(store, tree, [FRIEND.peer_id]).cid


def test_recipient_that_is_not_a_peer_id_is_a_user_error(store: ShareStore, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a peer ID"):
        store.prepare_private(_tree(tmp_path), ["bob"])
