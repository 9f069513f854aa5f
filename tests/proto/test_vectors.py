"""Test vectors: fixed key and content give fixed bytes (same values as docs/protocol.md)."""

from __future__ import annotations

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import DEFAULT_CHUNK_SIZE, hash_chunks
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import FileEntry, ShareKind, build_manifest
from p2pshare.proto.signed_manifest import decode_signed_manifest, sign_manifest
from p2pshare.proto.ticket import Ticket

SEED = bytes(range(32))
CONTENT = b"hello p2pshare\n"
CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z

PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
PEER_ID = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
CHUNK_HASH = "850e330c5874ad3ea0696cdd80dc776d5b6fee7a0a3bb372262900703f10fa37"
SIGNED_MANIFEST = (
    "82a4626f6479c4ab89a17601a46b696e64a466696c65a46e616d65a968656c6c6f2e747874a9707562"
    "6c6973686572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a7"
    "63726561746564ce6955b900aa6368756e6b5f73697a65ce00100000a7656e74726965739192a96865"
    "6c6c6f2e7478740fa6686173686573c420850e330c5874ad3ea0696cdd80dc776d5b6fee7a0a3bb372"
    "262900703f10fa37a5706167657390a3736967c4408353d41d518963b348eb5394a9cb2a3d9d8f6cf2"
    "42b96b78e171357dd545fe547cec45a9bf30b8a39ce76090c2d6bc4953fa916e1db29176b62911ffd2"
    "c30f00"
)
CONTENT_ID = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"
# A directory share with an executable file and an empty directory.
SCRIPT = b"#!/bin/sh\necho hello p2pshare\n"
SCRIPT_HASH = "1e481e34af1891418cd1faec5a27d4d0bac198c02a593a9444451bae65311696"
TREE_SIGNED_MANIFEST = (
    "82a4626f6479c4e38aa17601a46b696e64a3646972a46e616d65a4746f6f6ca97075626c6973686572"
    "c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a7637265617465"
    "64ce6955b900aa6368756e6b5f73697a65ce00100000a7656e74726965739293a962696e2f68656c6c"
    "6f1e81a465786563c392a968656c6c6f2e7478740fa6686173686573c4401e481e34af1891418cd1fa"
    "ec5a27d4d0bac198c02a593a9444451bae65311696850e330c5874ad3ea0696cdd80dc776d5b6fee7a"
    "0a3bb372262900703f10fa37a5706167657390a46469727391a46c6f6773a3736967c440cca4175120"
    "9f4399d25e3fea766b2e8e6d185987dfbadecb44ee42d34ac63db4a1f7047bb5c8b034d41cb9c23b28"
    "e0fe96b0af0cbc2ba647db9baf62476cf401"
)
TREE_CONTENT_ID = "bafkr4ifc27hz75kwbi3qkaevwfrg6wmcmywqxjxsyg6nuucyautgj7nwue"
TICKET = (
    "p2ps1spcciakvdyqcqlgiwogiajnj7j5xm5lii5g4exsg6ujd2j6elzojuwguazjj5ogeeyacicabciqahiihx"
    "7z44ef6dvyn2ghhjpajsz7e2yyjxjinl4o5zbtecjktdoerw4xws4buf4ytenzogaxdalrrf52gg4bpgqyda"
    "mplftmli"
)


def test_hello_vector() -> None:
    key = NodeKey.from_seed(SEED)
    assert key.public_key.hex() == PUBLIC_KEY
    assert key.peer_id == PEER_ID
    hashes = hash_chunks(CONTENT, DEFAULT_CHUNK_SIZE)
    assert [h.hex() for h in hashes] == [CHUNK_HASH]
    built = build_manifest(
        [FileEntry("hello.txt", len(CONTENT), b"".join(hashes))],
        kind=ShareKind.FILE,
        publisher=key.public_key,
        created=CREATED,
        name="hello.txt",
    )
    signed = sign_manifest(built.manifest, key)
    assert signed.data.hex() == SIGNED_MANIFEST
    assert str(signed.cid) == CONTENT_ID
    assert decode_signed_manifest(bytes.fromhex(SIGNED_MANIFEST), ContentId.parse(CONTENT_ID))


def test_tree_vector_with_exec_flag_and_empty_directory() -> None:
    key = NodeKey.from_seed(SEED)
    script_hashes = hash_chunks(SCRIPT, DEFAULT_CHUNK_SIZE)
    assert [h.hex() for h in script_hashes] == [SCRIPT_HASH]
    built = build_manifest(
        [
            FileEntry(
                "hello.txt", len(CONTENT), b"".join(hash_chunks(CONTENT, DEFAULT_CHUNK_SIZE))
            ),
            FileEntry("bin/hello", len(SCRIPT), b"".join(script_hashes), executable=True),
        ],
        kind=ShareKind.DIRECTORY,
        publisher=key.public_key,
        created=CREATED,
        name="tool",
        directories=["logs"],
    )
    signed = sign_manifest(built.manifest, key)
    assert signed.data.hex() == TREE_SIGNED_MANIFEST
    assert str(signed.cid) == TREE_CONTENT_ID
    decoded = decode_signed_manifest(
        bytes.fromhex(TREE_SIGNED_MANIFEST), ContentId.parse(TREE_CONTENT_ID)
    ).manifest
    assert [(e.path, e.executable) for e in decoded.entries] == [
        ("bin/hello", True),
        ("hello.txt", False),
    ]
    assert decoded.directories == ("logs",)


def test_ticket_vector() -> None:
    ticket = Ticket(ContentId.parse(CONTENT_ID), PEER_ID, ("/ip4/127.0.0.1/tcp/4001",))
    assert str(ticket) == TICKET
    assert Ticket.parse(TICKET) == ticket
