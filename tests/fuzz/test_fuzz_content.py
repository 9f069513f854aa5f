"""Fuzzing the content model: manifests, signed manifests, hash pages, CIDs, tickets,
multiformats and bitfields (see harness.py for the invariant)."""

from __future__ import annotations

import functools
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import RemoteProtocolError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.canonical import unpack
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import (
    MAX_BODY_SIZE,
    MAX_ENTRIES,
    Manifest,
    decode_manifest,
    encode_manifest,
    verify_page,
)
from p2pshare.proto.multiformats import b32decode, b58decode, b58encode, decode_varint
from p2pshare.proto.pages import split_pages
from p2pshare.proto.signed_manifest import (
    SignedManifest,
    decode_signed_manifest,
    signing_message,
)
from p2pshare.proto.ticket import Ticket, parse_content_ref
from tests.fuzz.harness import (
    ValueSeed,
    check_decoder,
    fuzz_inputs,
    fuzz_settings,
    nested,
    pack,
    text_inputs,
)
from tests.fuzz.seeds import (
    CID,
    KEY,
    OTHER_KEY,
    built_manifests,
    signed_manifests,
    unpacked,
    value_seeds,
)

pytestmark = pytest.mark.fuzz

BODIES = tuple(signed.body for signed in signed_manifests())
SIGNED = tuple(signed.data for signed in signed_manifests())
TICKETS = (
    str(Ticket(CID, KEY.peer_id)),
    str(Ticket(CID, OTHER_KEY.peer_id, ("/ip4/127.0.0.1/tcp/4001", "/dns/example.org/tcp/1"))),
)
CIDS = tuple(str(signed.cid) for signed in signed_manifests())


def _signed(body: bytes) -> bytes:
    """Wire bytes of ``body`` with a valid signature: mutations that reach the parser."""
    return pack({"body": body, "sig": KEY.sign(signing_message(body))})


@fuzz_settings
@given(fuzz_inputs(BODIES, value_seeds(BODIES), max_random=2048))
def test_manifest_body(data: bytes) -> None:
    manifest = check_decoder(decode_manifest, data)
    if manifest is not None:
        assert isinstance(manifest, Manifest)
        assert encode_manifest(manifest) == data


def test_deep_nesting_is_a_protocol_error() -> None:
    # A version field 1000 levels deep once made the error message itself fail.
    body = unpacked(BODIES[0])
    assert isinstance(body, dict)
    for key in body:
        assert check_decoder(decode_manifest, pack({**body, key: nested(1000)})) is None


@fuzz_settings
@given(
    st.one_of(
        fuzz_inputs(SIGNED, [ValueSeed({"body": body, "sig": bytes(64)}) for body in BODIES]),
        fuzz_inputs(BODIES, value_seeds(BODIES)).map(_signed),
    ),
    st.booleans(),
)
def test_signed_manifest(data: bytes, with_cid: bool) -> None:
    expected = ContentId.of(data) if with_cid else None
    signed = check_decoder(lambda raw: decode_signed_manifest(raw, expected), data)
    if signed is not None:
        assert isinstance(signed, SignedManifest)
        assert signed.data == data
        assert signed.cid == ContentId.of(data)


def test_a_declared_count_costs_nothing_before_its_elements_arrive() -> None:
    # An array announcing 100 000 manifest entries and holding none: msgpack would
    # allocate the list for the count first (found by the long fuzz run).
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            unpack(
                b"\xdd\x00\x01\x86\xa0",
                what="manifest",
                max_size=MAX_BODY_SIZE,
                max_str_len=0,
                max_bin_len=0,
                max_array_len=MAX_ENTRIES,
                max_map_len=0,
            )
        assert tracemalloc.get_traced_memory()[1] < 16 * 1024
    finally:
        tracemalloc.stop()


def test_signed_manifest_for_another_cid_is_an_integrity_error() -> None:
    assert check_decoder(lambda raw: decode_signed_manifest(raw, CID), SIGNED[0]) is None


@fuzz_settings
@given(st.data())
def test_hash_page(data: st.DataObject) -> None:
    built = built_manifests()[-1]
    index = data.draw(st.integers(0, len(built.pages) - 1))
    page = data.draw(fuzz_inputs(built.pages, max_random=4096))
    hash_page = check_decoder(lambda raw: verify_page(built.manifest, index, raw), page)
    if hash_page is not None:
        assert hash_page.hashes == built.pages[index]


def test_hash_page_seeds_verify() -> None:
    built = built_manifests()[-1]
    hashes = b"".join(built.pages)
    assert split_pages(hashes) == list(built.pages)
    for index, page in enumerate(built.pages):
        assert check_decoder(functools.partial(verify_page, built.manifest, index), page)


@fuzz_settings
@given(fuzz_inputs([CID.to_bytes(), *(ContentId.parse(c).to_bytes() for c in CIDS)]))
def test_cid_bytes(data: bytes) -> None:
    cid = check_decoder(ContentId.from_bytes, data)
    if cid is not None:
        assert cid.to_bytes() == data


@fuzz_settings
@given(text_inputs(CIDS))
def test_cid_text(text: str) -> None:
    cid = check_decoder(ContentId.parse, text)
    if cid is not None:
        assert str(cid) == text


@fuzz_settings
@given(text_inputs(TICKETS, max_random=1024))
def test_ticket(text: str) -> None:
    ticket = check_decoder(Ticket.parse, text)
    if ticket is not None:
        assert str(ticket) == text


@fuzz_settings
@given(text_inputs(TICKETS + CIDS))
def test_content_ref(text: str) -> None:
    ref = check_decoder(parse_content_ref, text)
    if ref is not None:
        cid, ticket = ref
        assert text in (str(cid), str(ticket))


@fuzz_settings
@given(
    fuzz_inputs([b"\x00", b"\x7f", b"\x80\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"]), st.data()
)
def test_varint(data: bytes, draw: st.DataObject) -> None:
    offset = draw.draw(st.integers(0, len(data)))
    decoded = check_decoder(lambda raw: decode_varint(raw, offset), data)
    if decoded is not None:
        value, end = decoded
        assert offset < end <= len(data)
        assert value < 2**63


@fuzz_settings
@given(text_inputs([KEY.peer_id, OTHER_KEY.peer_id, "1", "11z"]))
def test_base58(text: str) -> None:
    raw = check_decoder(b58decode, text)
    if raw is not None:
        assert b58encode(raw) == text


@fuzz_settings
@given(text_inputs([c[1:] for c in CIDS] + [t[5:] for t in TICKETS]))
def test_base32(text: str) -> None:
    check_decoder(b32decode, text)


@fuzz_settings
@given(
    fuzz_inputs([b"", b"\x80", b"\xff\xc0", bytes(8), b"\xff" * 16], max_random=64),
    st.integers(0, 160),
)
def test_bitfield(data: bytes, size: int) -> None:
    field = check_decoder(lambda raw: Bitfield.from_bytes(raw, size), data)
    if field is not None:
        assert field.to_bytes() == data
        assert field.count() == len(list(field.iter_set()))


def test_bitfield_length_is_checked_before_allocating() -> None:
    # A HAVE frame may name 8 Mi chunks; the reply's bitfield must not cost 1 MiB
    # before its one byte is found to be short.
    assert check_decoder(lambda raw: Bitfield.from_bytes(raw, 2**31), b"\xff", size=0) is None
