"""Content IDs: layout, parsing, and refusal of everything that is not one."""

from __future__ import annotations

import base64

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError, UserError
from p2pshare.proto.cid import ContentId, format_cid, multihash_bytes, parse_cid
from p2pshare.proto.errors import MalformedReferenceError
from p2pshare.proto.multiformats import b32encode

DIGEST = bytes(range(32))


def _text(binary: bytes) -> str:
    return "b" + b32encode(binary)


def test_layout_is_cidv1_raw_blake3() -> None:
    cid = ContentId(DIGEST)
    assert cid.to_bytes() == b"\x01\x55\x1e\x20" + DIGEST
    assert multihash_bytes(cid) == cid.multihash == b"\x1e\x20" + DIGEST
    expected = "b" + base64.b32encode(cid.to_bytes()).decode().lower().rstrip("=")
    assert format_cid(cid) == str(cid) == expected
    assert str(cid).startswith("bafkr4")
    assert len(str(cid)) == 59


def test_content_id_names_the_blake3_of_the_bytes() -> None:
    data = b"signed manifest bytes"
    cid = ContentId.of(data)
    assert cid.digest == blake3.blake3(data).digest()
    cid.verify(data)
    with pytest.raises(IntegrityError):
        cid.verify(data + b"\0")


@given(st.binary(min_size=32, max_size=32))
def test_round_trips(digest: bytes) -> None:
    cid = ContentId(digest)
    assert parse_cid(str(cid)) == cid
    assert ContentId.from_bytes(cid.to_bytes()) == cid


def test_digest_must_have_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        ContentId(bytes(31))


MALFORMED = {
    "empty": "",
    "cidv0": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    "base58 multibase": "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA",
    "upper case body under 'b'": "b" + str(ContentId(DIGEST))[1:].upper(),
    "lower case body under 'B'": "B" + str(ContentId(DIGEST))[1:],
    "mixed case body under 'B'": "B"
    + str(ContentId(DIGEST))[1:5]
    + str(ContentId(DIGEST))[5:].upper(),
    "upper case with padding": str(ContentId(DIGEST)).upper() + "=",
    "padding": str(ContentId(DIGEST)) + "=",
    "truncated": str(ContentId(DIGEST))[:-1],
    "one char too many": str(ContentId(DIGEST)) + "a",
    "not base32": "b0189",
    "sha2-256": _text(b"\x01\x55\x12\x20" + DIGEST),
    "dag-pb codec": _text(b"\x01\x70\x1e\x20" + DIGEST),
    "cid version 0 prefix": _text(b"\x00\x55\x1e\x20" + DIGEST),
    "short digest": _text(b"\x01\x55\x1e\x1f" + DIGEST[:31]),
    "trailing byte": _text(b"\x01\x55\x1e\x20" + DIGEST + b"\0"),
    "very long": "b" + "a" * 10_000,
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_text_gives_one_sentence(text: str) -> None:
    with pytest.raises(MalformedReferenceError) as caught:
        parse_cid(text)
    message = str(caught.value)
    assert message.startswith("this is not a p2pshare content ID: ")
    assert "\n" not in message
    assert isinstance(caught.value, RemoteProtocolError)
    assert isinstance(caught.value, UserError)


def test_sha256_cid_is_explained() -> None:
    with pytest.raises(MalformedReferenceError, match="sha2-256"):
        parse_cid(MALFORMED["sha2-256"])


@given(st.text(max_size=80))
def test_arbitrary_text_gives_a_typed_error(text: str) -> None:
    try:
        cid = parse_cid(text)
    except MalformedReferenceError:
        return
    assert str(cid) in (text, text.lower())


@given(st.binary(min_size=32, max_size=32))
def test_upper_case_multibase_cid_names_the_same_content(digest: bytes) -> None:
    """Multibase 'B' (base32upper) is the same CID; p2pshare prints it lower case."""
    cid = ContentId(digest)
    upper = str(cid).upper()
    assert upper.startswith("B")
    assert parse_cid(upper) == cid
    assert str(parse_cid(upper)) == str(cid)


@given(st.binary(max_size=60))
def test_arbitrary_binary_gives_a_typed_error(data: bytes) -> None:
    try:
        cid = ContentId.from_bytes(data)
    except RemoteProtocolError:
        return
    assert cid.to_bytes() == data
    assert parse_cid(_text(data)) == cid


@given(st.binary(min_size=32, max_size=32), st.data())
def test_flipped_character_changes_or_breaks_the_id(digest: bytes, data: st.DataObject) -> None:
    text = str(ContentId(digest))
    position = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567QA0="))
    mutated = text[:position] + char + text[position + 1 :]
    try:
        cid = parse_cid(mutated)
    except MalformedReferenceError:
        return
    assert (cid.digest == digest) == (mutated == text)
