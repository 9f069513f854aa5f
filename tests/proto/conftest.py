"""Fixtures for the content-model tests: a fixed node key and a small-share builder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, hash_chunks
from p2pshare.proto.manifest import FileEntry, ShareKind, build_manifest
from p2pshare.proto.signed_manifest import SignedManifest, sign_manifest

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Session scope: hypothesis runs many examples per test function and refuses
# function-scoped fixtures, which would not be reset between examples.


@pytest.fixture(scope="session")
def node_key() -> NodeKey:
    return NodeKey.from_seed(bytes(range(32)))


@pytest.fixture(scope="session")
def make_share(node_key: NodeKey) -> Callable[[Mapping[str, bytes]], SignedManifest]:
    """Sign a directory share of in-memory files, cut in the smallest chunks allowed."""

    def make(files: Mapping[str, bytes]) -> SignedManifest:
        built = build_manifest(
            [
                FileEntry(path, len(data), b"".join(hash_chunks(data, MIN_CHUNK_SIZE)))
                for path, data in files.items()
            ],
            kind=ShareKind.DIRECTORY,
            publisher=node_key.public_key,
            created=1_700_000_000,
            chunk_size=MIN_CHUNK_SIZE,
        )
        return sign_manifest(built.manifest, node_key)

    return make
