"""Tickets: round trips, shell and URL safety, and one clear sentence for every damage."""

from __future__ import annotations

import shlex
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError, RemoteProtocolError, UserError
from p2pshare.identity import NodeKey
from p2pshare.proto.canonical import pack
from p2pshare.proto.cid import ContentId
from p2pshare.proto.errors import MalformedReferenceError
from p2pshare.proto.multiformats import b32encode, b58decode
from p2pshare.proto.ticket import (
    MAX_ADDRS,
    MAX_TICKET_CHARS,
    TICKET_CHECKSUM_DOMAIN,
    Ticket,
    format_ticket,
    parse_content_ref,
    parse_ticket,
)

CID = ContentId(bytes(range(32)))
PEER = NodeKey.from_seed(bytes(range(32))).peer_id
ADDRS = ("/ip4/192.0.2.7/tcp/4001", "/ip6/2001:db8::1/tcp/4001", "/dns4/example.org/tcp/443")
TICKET = Ticket(CID, PEER, ADDRS)
TEXT = str(TICKET)
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"

addrs = st.lists(
    st.builds(
        "/ip4/{}.{}.{}.{}/tcp/{}".format,
        *[st.integers(0, 255)] * 4,
        st.integers(1, 65535),
    )
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40).map(
        lambda text: "/" + text
    ),
    max_size=MAX_ADDRS,
)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), addrs)
def test_round_trips(digest: bytes, seed: bytes, addresses: list[str]) -> None:
    ticket = Ticket(ContentId(digest), NodeKey.from_seed(seed).peer_id, tuple(addresses))
    text = format_ticket(ticket)
    assert parse_ticket(text) == ticket
    assert parse_content_ref(text) == (ticket.cid, ticket)
    assert parse_content_ref(str(ticket.cid).upper()) == (ticket.cid, None), "multibase 'B'"
    assert text.startswith("p2ps1")
    assert len(text) <= MAX_TICKET_CHARS
    assert set(text) <= set(BASE32 + "p1")
    assert shlex.quote(text) == text
    assert urllib.parse.quote(text, safe="") == text


def test_ticket_without_addresses_and_with_a_hashed_peer_id() -> None:
    hashed_peer = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"  # sha2-256 multihash
    ticket = Ticket(CID, hashed_peer)
    assert parse_ticket(str(ticket)) == ticket


@pytest.mark.parametrize(
    ("peer_id", "addresses"),
    [
        ("not-base58!", ()),
        ("", ()),
        ("1" + PEER, ()),
        (PEER[:-1], ()),
        (PEER, ("ip4/1.2.3.4",)),
        (PEER, ("/ip4/1.2.3.4/tcp/1 ",)),
        (PEER, ("/",)),
        (PEER, ("/" + "a" * 300,)),
        (PEER, ("/ip4/1.2.3.4",) * (MAX_ADDRS + 1)),
    ],
)
def test_invalid_ticket_cannot_be_made(peer_id: str, addresses: tuple[str, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        Ticket(CID, peer_id, addresses)


def _assert_sentence(text: str, start: str) -> MalformedReferenceError:
    with pytest.raises(MalformedReferenceError) as caught:
        parse_ticket(text)
    message = str(caught.value)
    assert message.startswith(start), message
    assert "\n" not in message
    assert isinstance(caught.value, UserError)
    assert isinstance(caught.value, RemoteProtocolError)
    return caught.value


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("", "this is not a p2pshare ticket: it is empty"),
        ("p2pz1" + TEXT[5:], "this is not a p2pshare ticket"),
        (str(CID), "this is not a p2pshare ticket"),
        ("P2PS1" + TEXT[5:], "this is not a p2pshare ticket"),
        ("p2psx" + TEXT[5:], "this is not a p2pshare ticket"),
        ("p2ps2" + TEXT[5:], "this ticket has format 2"),
        (TEXT.upper(), "this is not a p2pshare ticket"),
        ("p2ps1" + TEXT[5:].upper(), "this p2pshare ticket is damaged"),
        (TEXT + "=", "this p2pshare ticket is damaged"),
        (TEXT[:20] + "1" + TEXT[21:], "this p2pshare ticket is damaged"),
        (TEXT[:20] + " " + TEXT[21:], "this p2pshare ticket is damaged"),
        (TEXT + "\n", "this p2pshare ticket is damaged"),
        ("p2ps1", "this p2pshare ticket is damaged"),
        (TEXT + "a" * MAX_TICKET_CHARS, "this p2pshare ticket is damaged"),
    ],
)
def test_malformed_ticket_gives_one_sentence(text: str, start: str) -> None:
    _assert_sentence(text, start)


def test_every_truncation_is_caught() -> None:
    for end in range(len(TEXT)):
        _assert_sentence(TEXT[:end], "this")


def test_every_single_character_change_is_caught() -> None:
    for position in range(5, len(TEXT)):
        for shift in (1, 16):
            char = BASE32[(BASE32.index(TEXT[position]) + shift) % len(BASE32)]
            _assert_sentence(TEXT[:position] + char + TEXT[position + 1 :], "this")


@given(st.data())
def test_random_character_changes_are_caught(data: st.DataObject) -> None:
    changes = data.draw(
        st.dictionaries(st.integers(5, len(TEXT) - 1), st.sampled_from(BASE32), min_size=1)
    )
    mutated = "".join(changes.get(position, char) for position, char in enumerate(TEXT))
    if mutated != TEXT:
        _assert_sentence(mutated, "this")


def _with_checksum(payload: bytes) -> str:
    import blake3

    checksum = blake3.blake3(TICKET_CHECKSUM_DOMAIN + payload).digest()[:4]
    return "p2ps1" + b32encode(payload + checksum)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        pack([CID.to_bytes(), b58decode(PEER)]),
        pack([CID.to_bytes(), b58decode(PEER), [], 0]),
        pack([CID.to_bytes()[:-1], b58decode(PEER), []]),
        pack([CID.to_bytes(), b"\x00\x05abc", []]),
        pack([CID.to_bytes(), b58decode(PEER), ["no-slash"]]),
        pack([CID.to_bytes(), b58decode(PEER), ["/a"] * (MAX_ADDRS + 1)]),
        pack({"cid": CID.to_bytes()}),
        pack([CID.to_bytes(), b58decode(PEER), []]) + b"\x00",
        b"\x93\xd9\x24" + CID.to_bytes(),
    ],
)
def test_well_checksummed_nonsense_is_malformed(payload: bytes) -> None:
    _assert_sentence(_with_checksum(payload), "this p2pshare ticket")


@given(st.text(max_size=120))
def test_arbitrary_text_gives_a_typed_error(text: str) -> None:
    try:
        ticket = parse_ticket(text)
    except MalformedReferenceError:
        return
    assert str(ticket) == text


@given(st.binary(max_size=300))
def test_arbitrary_payload_gives_a_typed_error(payload: bytes) -> None:
    for text in ("p2ps1" + b32encode(payload), _with_checksum(payload)):
        try:
            ticket = parse_ticket(text)
        except MalformedReferenceError:
            continue
        assert str(ticket) == text


@given(st.one_of(st.text(max_size=120), st.text(BASE32, max_size=80).map("p2ps1".__add__)))
def test_arbitrary_reference_gives_a_typed_error(text: str) -> None:
    try:
        cid, ticket = parse_content_ref(text)
    except MalformedReferenceError as exc:
        message = str(exc)
    else:
        assert text in (str(cid), str(ticket))
        return
    assert message.startswith("this ")


def test_content_ref_accepts_a_bare_content_id() -> None:
    assert parse_content_ref(str(CID)) == (CID, None)
    assert parse_content_ref(TEXT) == (CID, TICKET)


@pytest.mark.parametrize("text", ["", "hello", "https://example.org", "12D3KooW"])
def test_content_ref_explains_what_it_accepts(text: str) -> None:
    with pytest.raises(MalformedReferenceError, match="neither a p2pshare content ID"):
        parse_content_ref(text)


def test_content_ref_reports_a_damaged_cid() -> None:
    with pytest.raises(MalformedReferenceError, match="not a p2pshare content ID"):
        parse_content_ref(str(CID)[:-3])
