"""Valid encodings the mutation strategies start from, built once per session."""

from __future__ import annotations

from functools import cache

import msgpack

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import (
    INLINE_MAX_CHUNKS,
    BuiltManifest,
    FileEntry,
    ShareKind,
    build_manifest,
)
from p2pshare.proto.pages import HASHES_PER_PAGE
from p2pshare.proto.signed_manifest import SignedManifest, sign_manifest
from tests.fuzz.harness import ValueSeed

KEY = NodeKey.from_seed(bytes(range(32)))
OTHER_KEY = NodeKey.from_seed(bytes(range(1, 33)))
CID = ContentId(bytes(range(32)))
CREATED = 1_700_000_000


def _hashes(count: int, salt: int) -> bytes:
    return b"".join(((i * 7 + salt) % 251).to_bytes(1, "big") * 32 for i in range(count))


@cache
def built_manifests() -> tuple[BuiltManifest, ...]:
    """A single file, a tree with an empty file and Unicode, and a two-page share."""
    size = 3 * MIN_CHUNK_SIZE + 5
    paged_chunks = HASHES_PER_PAGE + INLINE_MAX_CHUNKS
    specs = [
        (ShareKind.FILE, "notes.txt", [FileEntry("notes.txt", size, _hashes(4, 1))]),
        (
            ShareKind.DIRECTORY,
            "album",
            [
                FileEntry("a/empty", 0, b""),
                FileEntry("a/b/c.bin", MIN_CHUNK_SIZE, _hashes(1, 2)),
                FileEntry("Ünïcode ✓.txt", 10, _hashes(1, 3)),
            ],
        ),
        (
            ShareKind.DIRECTORY,
            None,
            [FileEntry("big", paged_chunks * MIN_CHUNK_SIZE, _hashes(paged_chunks, 4))],
        ),
    ]
    return tuple(
        build_manifest(
            files,
            kind=kind,
            publisher=KEY.public_key,
            created=CREATED,
            chunk_size=MIN_CHUNK_SIZE,
            name=name,
        )
        for kind, name, files in specs
    )


@cache
def signed_manifests() -> tuple[SignedManifest, ...]:
    return tuple(sign_manifest(built.manifest, KEY) for built in built_manifests())


def unpacked(data: bytes) -> object:
    """The msgpack value of a valid encoding, as the value mutations take it."""
    return msgpack.unpackb(data, raw=False)


def value_seeds(encodings: tuple[bytes, ...]) -> list[ValueSeed]:
    return [ValueSeed(unpacked(data)) for data in encodings]
