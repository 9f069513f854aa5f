"""Fuzzing the data channel: setup messages, session ids, hellos and the AEAD frame
stream (see harness.py for the invariant)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.proto.datachannel import (
    CLIENT_HELLO_SIZE,
    SESSION_ID_SIZE,
    Channel,
    ChannelOffer,
    Open,
    Refuse,
    SessionKeys,
    SessionTable,
    decode_open,
    decode_reply,
    encode_open,
    encode_reply,
)
from p2pshare.proto.dataframes import (
    INITIAL_RECEIVE_BUFFER,
    MAX_CIPHERTEXT,
    MAX_RECEIVE_BUFFER,
    Cipher,
    FrameOpener,
    FrameReader,
    FrameSealer,
)
from p2pshare.proto.framing import HEADER_SIZE
from p2pshare.proto.transfer import Role
from tests.fuzz.harness import check_decoder, fuzz_inputs, fuzz_settings, splits
from tests.fuzz.seeds import KEY, OTHER_KEY, value_seeds
from tests.proto.frame_reading import receive

pytestmark = pytest.mark.fuzz

OPENS = tuple(
    encode_open(message)[HEADER_SIZE:]
    for message in (
        Open(bytes(range(32))),
        Open(bytes(32), (Cipher.CHACHA20_POLY1305,)),
    )
)
REPLIES = tuple(
    encode_reply(message)[HEADER_SIZE:]
    for message in (
        ChannelOffer(bytes(16), bytes(range(32)), 40001, bytes(range(32, 64)), Cipher.AES_256_GCM),
        Refuse("busy", "too many data channels pending"),
    )
)
KEYS = SessionKeys(bytes(range(16)), Cipher.AES_256_GCM, bytes(32), bytes(range(32)))
PLAINTEXTS = (b"x", b"chunk " * 100, b"\0" * 3000)


def _sealed_stream(fin: bool) -> bytes:
    sealer = FrameSealer(KEYS.cipher, KEYS.client_to_server)
    frames = [sealer.seal(text) for text in PLAINTEXTS]
    return b"".join(frames) + (sealer.seal_fin() if fin else b"")


STREAMS = (_sealed_stream(fin=True), _sealed_stream(fin=False))


@fuzz_settings
@given(fuzz_inputs(OPENS, value_seeds(OPENS)))
def test_open(data: bytes) -> None:
    message = check_decoder(decode_open, data)
    if message is not None:
        assert decode_open(encode_open(message)[HEADER_SIZE:]) == message


@fuzz_settings
@given(fuzz_inputs(REPLIES, value_seeds(REPLIES)))
def test_reply(data: bytes) -> None:
    message = check_decoder(decode_reply, data)
    if message is not None:
        # Setup messages are not signed, so not held to one encoding; ours reads back.
        assert decode_reply(encode_reply(message)[HEADER_SIZE:]) == message


def _read(pieces: list[bytes]) -> list[bytes]:
    """What EncryptedStream delivers when ``pieces`` arrive (tests.proto.frame_reading)."""
    reader = FrameReader(FrameOpener(KEYS.cipher, KEYS.client_to_server))
    plaintexts = receive(reader, pieces)
    reader.end_of_stream()
    return plaintexts


@fuzz_settings
@given(fuzz_inputs(STREAMS, max_random=2048), st.data())
def test_frame_stream(data: bytes, draw: st.DataObject) -> None:
    pieces = draw.draw(splits(data))
    plaintexts = check_decoder(lambda _: _read(pieces), data, fixed=MAX_RECEIVE_BUFFER)
    if plaintexts is not None:
        # Only the untouched stream, cut anywhere, authenticates to its end.
        assert data == STREAMS[0]
        assert plaintexts == [*PLAINTEXTS, b""]


def test_truncated_frame_stream_is_refused() -> None:
    assert check_decoder(lambda raw: _read([raw]), STREAMS[1]) is None
    assert check_decoder(lambda raw: _read([raw]), STREAMS[0][:-1]) is None


def test_a_header_announcing_a_large_frame_costs_one_fixed_buffer() -> None:
    # A header, then a read: the reader takes its full receive buffer (where the frame
    # will be received), and never more than that, whatever the length says.
    def header_then_byte(raw: bytes) -> list[bytes]:
        return _read([raw[:HEADER_SIZE], raw[HEADER_SIZE:]])

    for length in (INITIAL_RECEIVE_BUFFER, MAX_CIPHERTEXT):
        start = length.to_bytes(HEADER_SIZE, "big") + b"x"
        assert check_decoder(header_then_byte, start, fixed=MAX_RECEIVE_BUFFER) is None


def _handshake(frame: bytes) -> None:
    """What a server does with the first bytes of a data connection."""
    table = SessionTable(ttl=10, max_pending=4, max_pending_per_peer=4)
    table.offer(
        Open(bytes(32)),
        peer_id=OTHER_KEY.peer_id,
        server_peer=KEY.peer_id,
        session_id=bytes(range(16)),
        server_nonce=bytes(32),
        secret=bytes(32),
        port=1,
        now=0,
    )
    session = table.claim(frame[:SESSION_ID_SIZE], now=1)
    Channel(session.keys, Role.SERVER).accept_client_hello(frame[SESSION_ID_SIZE:])


def _client_hello() -> bytes:
    table = SessionTable(ttl=10, max_pending=4, max_pending_per_peer=4)
    request = Open(bytes(32))
    offer = table.offer(
        request,
        peer_id=OTHER_KEY.peer_id,
        server_peer=KEY.peer_id,
        session_id=bytes(range(16)),
        server_nonce=bytes(32),
        secret=bytes(32),
        port=1,
        now=0,
    )
    hello = Channel(table.claim(offer.session_id, 0).keys, Role.CLIENT).client_hello()
    assert len(hello) == CLIENT_HELLO_SIZE
    return hello


@fuzz_settings
@given(fuzz_inputs([_client_hello()], max_random=128))
def test_client_hello(data: bytes) -> None:
    if check_decoder(_handshake, data) is not None:
        assert data == _client_hello()


def test_client_hello_seed_is_accepted() -> None:
    _handshake(_client_hello())
