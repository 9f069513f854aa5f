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


def test_ticket_vector() -> None:
    ticket = Ticket(ContentId.parse(CONTENT_ID), PEER_ID, ("/ip4/127.0.0.1/tcp/4001",))
    assert str(ticket) == TICKET
    assert Ticket.parse(TICKET) == ticket
