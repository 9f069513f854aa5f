"""Private-share crypto: sealed content keys, sealed chunks, the sealed file list."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.manifest import (
    FileEntry,
    Manifest,
    ShareKind,
    build_manifest,
    decode_manifest,
    encode_manifest,
)
from p2pshare.proto.sealed import (
    ENVELOPE,
    PRIVATE_BODY,
    SEALED_KEY_SIZE,
    TAG_SIZE,
    Envelope,
    NotARecipientError,
    PrivateBody,
    PrivateEntry,
    TamperedCiphertextError,
    decrypt_chunk,
    encode_envelope,
    encrypt_chunk,
    open_body,
    open_content_key,
    open_envelope,
    plain_chunk_size,
    plain_size,
    seal_body,
    seal_content_key,
    sealed_size,
    x25519_private_from_ed25519_seed,
    x25519_public_from_ed25519,
)

SHARE_ID = bytes(range(16))
seeds = st.binary(min_size=32, max_size=32)
keys = st.binary(min_size=32, max_size=32)


def test_ed25519_to_x25519_matches_libsodium_vector() -> None:
    # libsodium test/default/ed25519_convert.c
    key = NodeKey.from_seed(
        bytes.fromhex("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
    )
    expected = "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
    assert x25519_public_from_ed25519(key.public_key).hex() == expected
    private = x25519_private_from_ed25519_seed(key.seed)
    assert private.public_key().public_bytes_raw().hex() == expected


@given(seeds)
def test_converted_public_key_matches_converted_private_key(seed: bytes) -> None:
    key = NodeKey.from_seed(seed)
    derived = x25519_private_from_ed25519_seed(seed).public_key().public_bytes_raw()
    assert x25519_public_from_ed25519(key.public_key) == derived


def test_small_order_recipient_key_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        x25519_public_from_ed25519(b"\x01" + bytes(31))


@given(seeds, keys, st.binary(min_size=16, max_size=16))
def test_sealed_key_round_trips_for_its_recipient(seed: bytes, key: bytes, share: bytes) -> None:
    recipient = NodeKey.from_seed(seed)
    sealed = seal_content_key(key, recipient.public_key, share)
    assert len(sealed) == SEALED_KEY_SIZE
    assert open_content_key((sealed,), seed, share) == key


@given(seeds, seeds, keys)
def test_sealed_key_does_not_open_for_another_node(seed: bytes, other: bytes, key: bytes) -> None:
    sealed = seal_content_key(key, NodeKey.from_seed(seed).public_key, SHARE_ID)
    if NodeKey.from_seed(other).public_key != NodeKey.from_seed(seed).public_key:
        with pytest.raises(NotARecipientError):
            open_content_key((sealed,), other, SHARE_ID)


def test_sealed_key_is_bound_to_its_share_id() -> None:
    seed = bytes(32)
    sealed = seal_content_key(bytes(32), NodeKey.from_seed(seed).public_key, SHARE_ID)
    with pytest.raises(NotARecipientError):
        open_content_key((sealed,), seed, bytes(16))


def test_recipient_finds_its_key_among_several() -> None:
    seeds_ = [bytes([n]) * 32 for n in range(3)]
    key = b"k" * 32
    sealed = tuple(seal_content_key(key, NodeKey.from_seed(s).public_key, SHARE_ID) for s in seeds_)
    for seed in seeds_:
        assert open_content_key(sealed, seed, SHARE_ID) == key


@given(st.lists(st.binary(max_size=100), max_size=4))
def test_garbage_sealed_keys_give_a_typed_error(sealed: list[bytes]) -> None:
    with pytest.raises(NotARecipientError):
        open_content_key(tuple(sealed), bytes(32), SHARE_ID)


@given(keys, st.binary(max_size=300), st.integers(0, 99_999), st.integers(0, 2**40), st.booleans())
def test_chunk_round_trips(key: bytes, data: bytes, file: int, chunk: int, last: bool) -> None:
    sealed = encrypt_chunk(key, SHARE_ID, file, chunk, last, data)
    assert len(sealed) == len(data) + TAG_SIZE
    assert decrypt_chunk(key, SHARE_ID, file, chunk, last, sealed) == data


@given(keys, st.binary(min_size=1, max_size=64), st.data())
def test_any_flipped_bit_of_a_chunk_is_caught(key: bytes, data: bytes, draw: st.DataObject) -> None:
    sealed = bytearray(encrypt_chunk(key, SHARE_ID, 0, 0, True, data))
    bit = draw.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(TamperedCiphertextError):
        decrypt_chunk(key, SHARE_ID, 0, 0, True, bytes(sealed))


def test_chunk_cannot_move_to_another_place_or_lose_its_last_flag() -> None:
    key = b"k" * 32
    sealed = encrypt_chunk(key, SHARE_ID, 1, 2, False, b"data")
    for file, chunk, last in ((0, 2, False), (1, 3, False), (1, 2, True)):
        with pytest.raises(TamperedCiphertextError):
            decrypt_chunk(key, SHARE_ID, file, chunk, last, sealed)


@given(keys, keys, st.binary(max_size=64))
def test_chunk_under_wrong_key_is_refused(key: bytes, wrong: bytes, data: bytes) -> None:
    sealed = encrypt_chunk(key, SHARE_ID, 0, 0, True, data)
    if wrong != key:
        with pytest.raises(TamperedCiphertextError):
            decrypt_chunk(wrong, SHARE_ID, 0, 0, True, sealed)


@given(st.integers(0, 10**12), st.sampled_from([MIN_CHUNK_SIZE, 1 << 20]))
def test_sealed_size_inverts(size: int, chunk_size: int) -> None:
    assert plain_size(sealed_size(size, chunk_size), chunk_size) == size


def test_impossible_sealed_size_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        plain_size(TAG_SIZE - 1, MIN_CHUNK_SIZE)
    assert plain_chunk_size(MIN_CHUNK_SIZE) == MIN_CHUNK_SIZE - TAG_SIZE


BODY = PrivateBody(
    single_file=False,
    name="secret",
    entries=(PrivateEntry("a/plan.txt", 10), PrivateEntry("run.sh", 3, executable=True)),
    directories=("empty",),
)


@given(keys)
def test_body_round_trips(key: bytes) -> None:
    assert open_body(key, SHARE_ID, seal_body(key, SHARE_ID, BODY)) == BODY


@given(keys, st.data())
def test_any_flipped_bit_of_the_body_is_caught(key: bytes, draw: st.DataObject) -> None:
    sealed = bytearray(seal_body(key, SHARE_ID, BODY))
    bit = draw.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(TamperedCiphertextError):
        open_body(key, SHARE_ID, bytes(sealed))


def test_body_refuses_unsafe_paths() -> None:
    with pytest.raises(RemoteProtocolError):
        PRIVATE_BODY.decode(
            PRIVATE_BODY.encode(PrivateBody(False, None, (PrivateEntry("../x", 1),)))
        )


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_decode_past_a_typed_error(data: bytes) -> None:
    for codec in (ENVELOPE, PRIVATE_BODY):
        with contextlib.suppress(RemoteProtocolError):
            codec.decode(data)


def test_envelope_round_trips_with_keys_sorted() -> None:
    envelope = Envelope(SHARE_ID, (b"\x02" * SEALED_KEY_SIZE, b"\x01" * SEALED_KEY_SIZE), b"x")
    decoded = ENVELOPE.decode(encode_envelope(envelope))
    assert decoded.sealed_keys == (b"\x01" * SEALED_KEY_SIZE, b"\x02" * SEALED_KEY_SIZE)
    assert decoded.share_id == SHARE_ID


def test_envelope_without_recipients_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        ENVELOPE.decode(encode_envelope(Envelope(SHARE_ID, (), b"")))


def test_private_share_vectors_of_protocol_md() -> None:
    recipient = NodeKey.from_seed(bytes(range(32)))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    content_key = bytes(range(64, 96))
    assert x25519_public_from_ed25519(recipient.public_key).hex() == (
        "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"
    )
    sealed = seal_content_key(content_key, recipient.public_key, SHARE_ID, ephemeral)
    assert sealed.hex() == (
        "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd1662540edd57ae518fea2b"
        "b5fad7d70fc842666406c86b28eb2daf8dbaa5577948e1b1e4eeb4f024045dbd733dc5dcae86d944"
    )
    assert open_content_key((sealed,), recipient.seed, SHARE_ID) == content_key
    chunk = encrypt_chunk(content_key, SHARE_ID, 0, 0, True, b"hello p2pshare\n")
    assert chunk.hex() == "ee7b5aee8b71d77ca56e7c34873af00d5ccf845f0f5c6b2b54c4107e07400e"
    body = PrivateBody(True, "hello.txt", (PrivateEntry("hello.txt", 15),))
    assert PRIVATE_BODY.encode(body).hex() == (
        "84a466696c65c3a46e616d65a968656c6c6f2e747874a7656e74726965739193a968656c6c6f2e7478740fc2a46469727390"
    )
    assert seal_body(content_key, SHARE_ID, body).hex() == (
        "9545b10fd718f14465e54707141d330ca5879a85edb456b3b1afb3830918b2aa"
        "78cfb8a50b7f8fc24211dc1a5f660824451a0d17e73159eb8da27fd98e4f5f0d0f0f"
    )


def _sealed_manifest(paths: list[str], sizes: list[int], envelope: bytes) -> Manifest:
    return build_manifest(
        [
            FileEntry(p, s, bytes(32 * -(-s // MIN_CHUNK_SIZE)))
            for p, s in zip(paths, sizes, strict=True)
        ],
        kind=ShareKind.DIRECTORY,
        publisher=NodeKey.from_seed(bytes(32)).public_key,
        created=0,
        chunk_size=MIN_CHUNK_SIZE,
        sealed=envelope,
    ).manifest


ENVELOPE_BYTES = encode_envelope(Envelope(SHARE_ID, (b"\x01" * SEALED_KEY_SIZE,), b"body"))


def test_manifest_carries_the_envelope_and_round_trips() -> None:
    manifest = _sealed_manifest(["000000", "000001"], [0, TAG_SIZE + 1], ENVELOPE_BYTES)
    assert decode_manifest(encode_manifest(manifest)) == manifest
    assert decode_manifest(encode_manifest(manifest)).sealed == ENVELOPE_BYTES


@pytest.mark.parametrize(
    ("paths", "sizes", "envelope"),
    [
        (["secret.txt"], [TAG_SIZE + 1], ENVELOPE_BYTES),
        (["000001"], [TAG_SIZE + 1], ENVELOPE_BYTES),
        (["000000"], [TAG_SIZE - 1], ENVELOPE_BYTES),
        (["000000"], [TAG_SIZE + 1], b"not an envelope"),
    ],
)
def test_manifest_refuses_a_sealed_share_that_names_or_sizes_files_wrongly(
    paths: list[str], sizes: list[int], envelope: bytes
) -> None:
    with pytest.raises(LocalProtocolError):
        _sealed_manifest(paths, sizes, envelope)


@given(st.binary(max_size=300))
def test_arbitrary_envelope_bytes_give_a_typed_error(data: bytes) -> None:
    with pytest.raises((RemoteProtocolError, NotARecipientError)):
        open_envelope(data, bytes(32), [], MIN_CHUNK_SIZE)


@given(st.data())
def test_flipped_bit_anywhere_in_an_envelope_is_caught(draw: st.DataObject) -> None:
    seed = bytes(32)
    content_key = b"k" * 32
    sealed = seal_content_key(content_key, NodeKey.from_seed(seed).public_key, SHARE_ID)
    data = bytearray(
        encode_envelope(Envelope(SHARE_ID, (sealed,), seal_body(content_key, SHARE_ID, BODY)))
    )
    sizes = [sealed_size(entry.size, MIN_CHUNK_SIZE) for entry in BODY.entries]
    assert open_envelope(bytes(data), seed, sizes, MIN_CHUNK_SIZE).body == BODY
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((RemoteProtocolError, NotARecipientError, TamperedCiphertextError)):
        open_envelope(bytes(data), seed, sizes, MIN_CHUNK_SIZE)
