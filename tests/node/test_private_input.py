"""A private share is never fetched as a compute input: the worker would get ciphertext."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.node.transfer_api import _no_private_input
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore

if TYPE_CHECKING:
    from pathlib import Path


def test_private_share_is_refused_as_a_compute_input(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    store = ShareStore(catalog, tmp_path / "content", NodeKey.from_seed(bytes(32)), MIN_CHUNK_SIZE)
    note = tmp_path / "note.txt"
    note.write_text("private\n")
    plain = store.signed_manifest(store.commit(store.prepare(note)).cid)
    sealed = store.signed_manifest(store.commit(store.prepare_private(note, [])).cid)
    try:
        _no_private_input(plain)
        with pytest.raises(UserError, match="is a private share"):
            _no_private_input(sealed)
    finally:
        catalog.close()
