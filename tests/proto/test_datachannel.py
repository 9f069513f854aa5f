"""The data channel's sans-IO part: setup messages, key schedule, sessions and AEAD frames."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.datachannel import (
    CLIENT_HELLO_SIZE,
    SERVER_HELLO_SIZE,
    SESSION_ID_SIZE,
    VERSION,
    Channel,
    ChannelOffer,
    ChannelVersionError,
    DataChannelRefusedError,
    NoCommonCipherError,
    Open,
    Refuse,
    RefuseCode,
    SessionKeys,
    SessionLimitError,
    SessionTable,
    UnknownSessionError,
    client_keys,
    decode_open,
    decode_reply,
    derive_keys,
    encode_open,
    encode_reply,
    refusal_for,
)
from p2pshare.proto.dataframes import (
    INITIAL_RECEIVE_BUFFER,
    MAX_PLAINTEXT,
    MAX_RECEIVE_BUFFER,
    MAX_WIRE_FRAME,
    TAG_SIZE,
    Cipher,
    FrameAuthenticationError,
    FrameOpener,
    FrameReader,
    FrameSealer,
    TruncatedStreamError,
    sealed_size,
)
from p2pshare.proto.framing import HEADER_SIZE, FrameTooLargeError
from p2pshare.proto.transfer import Role
from tests.proto.frame_reading import receive

CLIENT = "12D3KooWClientClientClientClientClientClientClientCl"
SERVER = "12D3KooWServerServerServerServerServerServerServerSe"
ciphers = st.sampled_from(list(Cipher))
# Plaintexts of 1 .. 300 bytes, a few per stream: enough for every boundary case of
# the framing at a speed that allows hundreds of examples.
plaintexts = st.lists(st.binary(min_size=1, max_size=300), max_size=6)


def keys_for(cipher: Cipher = Cipher.AES_256_GCM, session_id: bytes = b"s" * 16) -> SessionKeys:
    return derive_keys(
        secret=b"k" * 32,
        client_nonce=b"c" * 32,
        server_nonce=b"n" * 32,
        session_id=session_id,
        cipher=cipher,
        client_peer=CLIENT,
        server_peer=SERVER,
    )


def sealed_stream(cipher: Cipher, chunks: list[bytes], *, fin: bool = True) -> list[bytes]:
    """The frames a sender produces for ``chunks`` (and its FIN)."""
    sealer = FrameSealer(cipher, keys_for(cipher).client_to_server)
    frames = [sealer.seal(chunk) for chunk in chunks]
    if fin:
        frames.append(sealer.seal_fin())
    return frames


def reader_for(cipher: Cipher) -> FrameReader:
    return FrameReader(FrameOpener(cipher, keys_for(cipher).client_to_server))


def decode(cipher: Cipher, pieces: list[bytes]) -> list[bytes]:
    """Receive ``pieces`` and then end the stream; the plaintexts, FIN as ``b""``."""
    reader = reader_for(cipher)
    out = receive(reader, pieces)
    reader.end_of_stream()
    return out


def decode_until_error(cipher: Cipher, data: bytes) -> tuple[list[bytes], Exception]:
    """Plaintexts delivered before the stream fails, and the failure."""
    reader = reader_for(cipher)
    out: list[bytes] = []
    try:
        receive(reader, [data], plaintexts=out)
        reader.end_of_stream()
    except RemoteError as exc:
        return out, exc
    pytest.fail(f"the stream decoded without an error: {out!r}")


def is_prefix(prefix: list[bytes], whole: list[bytes]) -> bool:
    return whole[: len(prefix)] == prefix


# --- setup messages ------------------------------------------------------------------------


@given(
    nonce=st.binary(min_size=32, max_size=32),
    offered=st.lists(ciphers, min_size=1, max_size=2, unique=True),
)
def test_open_round_trips(nonce: bytes, offered: list[Cipher]) -> None:
    message = Open(client_nonce=nonce, ciphers=tuple(offered))
    frame = encode_open(message)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_open(frame[4:]) == message


@given(
    session_id=st.binary(min_size=16, max_size=16),
    nonce=st.binary(min_size=32, max_size=32),
    port=st.integers(1, 65535),
    secret=st.binary(min_size=32, max_size=32),
    cipher=ciphers,
)
def test_offer_round_trips(
    session_id: bytes, nonce: bytes, port: int, secret: bytes, cipher: Cipher
) -> None:
    message = ChannelOffer(session_id, nonce, port, secret, cipher)
    assert decode_reply(encode_reply(message)[4:]) == message
    assert secret.hex() not in repr(message), "the secret never reaches a log line"


@given(code=st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True), reason=st.text(max_size=200))
def test_refuse_round_trips(code: str, reason: str) -> None:
    assert decode_reply(encode_reply(Refuse(code, reason))[4:]) == Refuse(code, reason)


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_arbitrary_setup_bytes_give_typed_errors_only(data: bytes) -> None:
    for decoder in (decode_open, decode_reply):
        with contextlib.suppress(RemoteProtocolError):
            decoder(data)


def test_a_newer_version_is_refused_whatever_follows() -> None:
    from p2pshare.proto.canonical import pack

    with pytest.raises(ChannelVersionError) as info:
        decode_open(pack(["open", VERSION + 1, "fields", "of", {"a": "later"}, "version"]))
    assert refusal_for(info.value).code == RefuseCode.UNSUPPORTED_VERSION


def test_unknown_ciphers_are_skipped_and_none_in_common_is_refused() -> None:
    from p2pshare.proto.canonical import pack

    opened = decode_open(pack(["open", 1, b"c" * 32, ["rot13", "chacha20-poly1305"]]))
    assert opened.ciphers == (Cipher.CHACHA20_POLY1305,)
    with pytest.raises(NoCommonCipherError) as info:
        decode_open(pack(["open", 1, b"c" * 32, ["rot13"]]))
    assert refusal_for(info.value).code == RefuseCode.NO_COMMON_CIPHER


def test_malformed_messages_are_protocol_errors() -> None:
    from p2pshare.proto.canonical import pack

    bad_opens = [
        pack(["offer", 1]),
        pack(["open", 1, b"short", ["aes-256-gcm"]]),
        pack(["open", 1, b"c" * 32, []]),
        pack(["open", True, b"c" * 32, ["aes-256-gcm"]]),
        pack(["open", 1, b"c" * 32, ["aes-256-gcm"], "extra"]),
        pack([]),
        pack({"open": 1}),
    ]
    for body in bad_opens:
        with pytest.raises(RemoteProtocolError):
            decode_open(body)
    bad_replies = [
        pack(["offer", b"s" * 16, b"n" * 32, 0, b"k" * 32, "aes-256-gcm"]),
        pack(["offer", b"s" * 16, b"n" * 32, 70000, b"k" * 32, "aes-256-gcm"]),
        pack(["offer", b"s" * 15, b"n" * 32, 80, b"k" * 32, "aes-256-gcm"]),
        pack(["offer", b"s" * 16, b"n" * 32, 80, b"k" * 32, "rot13"]),
        pack(["refuse", "Not A Code", "x"]),
        pack(["refuse", "busy", "x" * 201]),
        pack(["hello"]),
    ]
    for body in bad_replies:
        with pytest.raises(RemoteProtocolError):
            decode_reply(body)


def test_we_never_build_what_we_would_refuse() -> None:
    with pytest.raises(LocalProtocolError):
        encode_open(Open(client_nonce=b"short"))
    with pytest.raises(LocalProtocolError):
        encode_reply(ChannelOffer(b"s" * 16, b"n" * 32, 0, b"k" * 32, Cipher.AES_256_GCM))
    with pytest.raises(LocalProtocolError):
        encode_reply(Refuse("Bad Code", "x"))


# --- key schedule ----------------------------------------------------------------------------


def test_keys_differ_per_direction_and_per_input() -> None:
    base = {
        "secret": b"k" * 32,
        "client_nonce": b"c" * 32,
        "server_nonce": b"n" * 32,
        "session_id": b"s" * 16,
        "cipher": Cipher.AES_256_GCM,
        "client_peer": CLIENT,
        "server_peer": SERVER,
    }
    keys = derive_keys(**base)  # type: ignore[arg-type]
    assert keys == derive_keys(**base)  # type: ignore[arg-type]
    assert keys.client_to_server != keys.server_to_client
    assert len(keys.client_to_server) == len(keys.server_to_client) == 32
    variants = {
        "secret": b"K" * 32,
        "client_nonce": b"C" * 32,
        "server_nonce": b"N" * 32,
        "session_id": b"S" * 16,
        "cipher": Cipher.CHACHA20_POLY1305,
        "client_peer": SERVER,
        "server_peer": CLIENT,
    }
    seen = {keys.client_to_server, keys.server_to_client}
    for name, value in variants.items():
        other = derive_keys(**{**base, name: value})  # type: ignore[arg-type]
        assert other.client_to_server not in seen, name
        assert other.server_to_client not in seen, name
        seen |= {other.client_to_server, other.server_to_client}
    assert keys.client_to_server.hex() not in repr(keys)
    assert keys.server_to_client.hex() not in repr(keys)


def test_client_and_server_derive_the_same_keys() -> None:
    table = SessionTable(ttl=30, max_pending=8, max_pending_per_peer=4)
    request = Open(client_nonce=b"c" * 32, ciphers=(Cipher.CHACHA20_POLY1305, Cipher.AES_256_GCM))
    offer = table.offer(
        request,
        peer_id=CLIENT,
        server_peer=SERVER,
        session_id=b"s" * 16,
        server_nonce=b"n" * 32,
        secret=b"k" * 32,
        port=4001,
        now=0.0,
    )
    assert offer.cipher is Cipher.CHACHA20_POLY1305, "the client's preference wins"
    server_side = table.claim(b"s" * 16, now=1.0)
    assert server_side.peer_id == CLIENT
    assert client_keys(request, offer, client_peer=CLIENT, server_peer=SERVER) == server_side.keys
    mistaken = client_keys(request, offer, client_peer=CLIENT, server_peer=CLIENT)
    assert mistaken != server_side.keys, "the keys bind the server's peer ID"
    with pytest.raises(RemoteProtocolError):
        client_keys(
            dataclasses.replace(request, ciphers=(Cipher.AES_256_GCM,)),
            offer,
            client_peer=CLIENT,
            server_peer=SERVER,
        )


# --- sessions --------------------------------------------------------------------------------


def offer_in(
    table: SessionTable, session_id: bytes, *, peer: str = CLIENT, now: float
) -> ChannelOffer:
    return table.offer(
        Open(client_nonce=b"c" * 32),
        peer_id=peer,
        server_peer=SERVER,
        session_id=session_id,
        server_nonce=b"n" * 32,
        secret=b"k" * 32,
        port=4001,
        now=now,
    )


def test_a_session_is_claimed_once() -> None:
    table = SessionTable(ttl=30, max_pending=8, max_pending_per_peer=4)
    offer_in(table, b"a" * 16, now=100.0)
    assert table.claim(b"a" * 16, now=101.0).peer_id == CLIENT
    with pytest.raises(UnknownSessionError):
        table.claim(b"a" * 16, now=101.0)
    with pytest.raises(UnknownSessionError):
        table.claim(b"b" * 16, now=101.0)
    assert len(table) == 0


def test_a_session_expires_after_its_ttl() -> None:
    table = SessionTable(ttl=30, max_pending=8, max_pending_per_peer=4)
    offer_in(table, b"a" * 16, now=100.0)
    offer_in(table, b"b" * 16, now=100.0)
    assert table.claim(b"a" * 16, now=129.999).peer_id == CLIENT
    with pytest.raises(UnknownSessionError, match="expired"):
        table.claim(b"b" * 16, now=130.0)


def test_pending_sessions_are_bounded_per_peer_and_in_total() -> None:
    table = SessionTable(ttl=30, max_pending=3, max_pending_per_peer=2)
    offer_in(table, b"a" * 16, now=0.0)
    offer_in(table, b"b" * 16, now=0.0)
    with pytest.raises(SessionLimitError):
        offer_in(table, b"c" * 16, now=0.0)
    offer_in(table, b"c" * 16, peer=SERVER, now=0.0)
    with pytest.raises(SessionLimitError):
        offer_in(table, b"d" * 16, peer="someone else", now=0.0)
    assert refusal_for(SessionLimitError("full")).code == RefuseCode.BUSY
    # Expired offers free their slots.
    offer_in(table, b"d" * 16, now=30.0)
    assert len(table) == 1
    with pytest.raises(LocalProtocolError):
        offer_in(table, b"d" * 16, peer=SERVER, now=30.0)


# --- frames ----------------------------------------------------------------------------------


@given(cipher=ciphers, chunks=plaintexts)
def test_seal_and_open_round_trip(cipher: Cipher, chunks: list[bytes]) -> None:
    frames = sealed_stream(cipher, chunks)
    assert [len(f) for f in frames] == [sealed_size(len(c)) for c in [*chunks, b""]]
    assert decode(cipher, [b"".join(frames)]) == [*chunks, b""]


@given(cipher=ciphers, chunks=plaintexts, data=st.data())
def test_any_split_of_the_stream_decodes_identically(
    cipher: Cipher, chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(sealed_stream(cipher, chunks))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decode(cipher, pieces) == [*chunks, b""]


# Plaintexts that also cross the initial receive buffer's size, so it has to grow.
large_plaintexts = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=300),
        st.integers(INITIAL_RECEIVE_BUFFER - 100, 2 * INITIAL_RECEIVE_BUFFER).map(
            lambda n: bytes(range(256)) * (n // 256) + b"x"
        ),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(cipher=ciphers, chunks=large_plaintexts, data=st.data())
def test_any_arrivals_and_read_sizes_deliver_the_stream_from_one_buffer(
    cipher: Cipher, chunks: list[bytes], data: st.DataObject
) -> None:
    """The shipped receive path (EncryptedStream drives FrameReader like this)."""
    stream = b"".join(sealed_stream(cipher, chunks))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    arrivals = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    sizes = data.draw(st.lists(st.integers(1, MAX_WIRE_FRAME), min_size=1, max_size=8))
    reads = itertools.cycle(sizes)
    reader = reader_for(cipher)
    assert receive(reader, arrivals, read_size=lambda: next(reads)) == [*chunks, b""]
    reader.end_of_stream()
    assert len(reader.free_space()) <= MAX_RECEIVE_BUFFER


@given(cipher=ciphers, chunks=large_plaintexts)
def test_receiving_what_wanted_asks_for_completes_a_frame_every_second_read(
    cipher: Cipher, chunks: list[bytes]
) -> None:
    """SO_RCVLOWAT set to wanted() wakes the shell once per header and once per frame."""
    frames = sealed_stream(cipher, chunks)
    stream = b"".join(frames)
    reader = reader_for(cipher)
    wanted: list[int] = []
    plaintexts: list[bytes] = []
    position = 0
    while position < len(stream):
        wanted.append(size := reader.wanted())
        receive(reader, [stream[position : position + size]], plaintexts=plaintexts)
        position += size
    assert plaintexts == [*chunks, b""]
    assert wanted == [n for frame in frames for n in (HEADER_SIZE, len(frame) - HEADER_SIZE)]


@settings(max_examples=300)
@given(cipher=ciphers, chunks=plaintexts, data=st.data())
def test_a_flipped_bit_anywhere_fails_the_stream(
    cipher: Cipher, chunks: list[bytes], data: st.DataObject
) -> None:
    frames = sealed_stream(cipher, chunks)
    stream = bytearray(b"".join(frames))
    bit = data.draw(st.integers(0, len(stream) * 8 - 1))
    stream[bit // 8] ^= 0x80 >> (bit % 8)
    delivered, error = decode_until_error(cipher, bytes(stream))
    assert is_prefix(delivered, [*chunks, b""]), "nothing altered is ever delivered"
    assert b"" not in delivered, "the FIN cannot be forged"
    frame_index, offset = locate(frames, bit // 8)
    if offset >= HEADER_SIZE:
        assert isinstance(error, FrameAuthenticationError)
        assert len(delivered) == frame_index
    else:
        # A length bit: the frame fails authentication, runs past the stream's end or
        # breaks the size bounds; never anything but a typed error.
        assert isinstance(error, (IntegrityError, FrameTooLargeError, RemoteProtocolError))


def locate(frames: list[bytes], position: int) -> tuple[int, int]:
    for index, frame in enumerate(frames):
        if position < len(frame):
            return index, position
        position -= len(frame)
    raise AssertionError("position beyond the stream")


@given(cipher=ciphers, chunks=st.lists(st.binary(min_size=1, max_size=64), min_size=2, max_size=6))
def test_reordered_replayed_or_dropped_frames_fail(cipher: Cipher, chunks: list[bytes]) -> None:
    frames = sealed_stream(cipher, chunks)
    attacks = {
        "swap": [frames[1], frames[0], *frames[2:]],
        "replay": [frames[0], frames[0], *frames[1:]],
        "replay later": [*frames[:2], frames[1], *frames[2:]],
        "drop": frames[1:],
        "drop middle": [frames[0], *frames[2:]],
    }
    for name, attacked in attacks.items():
        delivered, error = decode_until_error(cipher, b"".join(attacked))
        assert isinstance(error, FrameAuthenticationError), name
        assert is_prefix(delivered, chunks), name


@given(cipher=ciphers, chunks=plaintexts, data=st.data())
def test_truncation_without_fin_is_detected(
    cipher: Cipher, chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(sealed_stream(cipher, chunks))
    cut = data.draw(st.integers(0, len(stream) - 1))
    delivered, error = decode_until_error(cipher, stream[:cut])
    assert isinstance(error, TruncatedStreamError)
    assert is_prefix(delivered, chunks)


@given(cipher=ciphers, chunks=plaintexts)
def test_a_stream_that_stops_at_a_frame_boundary_without_fin_is_truncated(
    cipher: Cipher, chunks: list[bytes]
) -> None:
    delivered, error = decode_until_error(
        cipher, b"".join(sealed_stream(cipher, chunks, fin=False))
    )
    assert isinstance(error, TruncatedStreamError)
    assert delivered == chunks


def test_data_after_fin_is_refused() -> None:
    cipher = Cipher.AES_256_GCM
    sealer = FrameSealer(cipher, keys_for(cipher).client_to_server)
    stream = sealer.seal(b"x") + sealer.seal_fin()
    # The FIN frame and more bytes in one read.
    delivered, error = decode_until_error(cipher, stream + b"more")
    assert delivered == [b"x"]
    assert isinstance(error, RemoteProtocolError)
    assert "after its FIN" in str(error)
    reader = reader_for(cipher)
    assert receive(reader, [stream]) == [b"x", b""]
    assert reader.next_ciphertext() is None
    with pytest.raises(RemoteProtocolError, match="after its FIN"):
        receive(reader, [b"more"])


@settings(max_examples=300)
@given(cipher=ciphers, data=st.binary(max_size=2000))
def test_arbitrary_bytes_give_typed_errors_only(cipher: Cipher, data: bytes) -> None:
    delivered, error = decode_until_error(cipher, data)
    assert delivered == []
    assert isinstance(error, (IntegrityError, RemoteProtocolError))


def test_oversize_and_undersize_lengths_are_refused_before_buffering() -> None:
    cipher = Cipher.AES_256_GCM
    reader = reader_for(cipher)
    with pytest.raises(FrameTooLargeError):
        receive(reader, [(MAX_PLAINTEXT + TAG_SIZE + 1).to_bytes(4, "big")])
    with pytest.raises(RemoteProtocolError, match="already failed"):
        reader.free_space()  # every error is final
    reader = reader_for(cipher)
    with pytest.raises(RemoteProtocolError):
        receive(reader, [(TAG_SIZE - 1).to_bytes(4, "big")])


def test_full_size_frames_and_their_limits() -> None:
    for cipher in Cipher:
        sealer = FrameSealer(cipher, keys_for(cipher).client_to_server)
        big = bytes(range(256)) * (MAX_PLAINTEXT // 256)
        assert decode(cipher, [sealer.seal(big) + sealer.seal_fin()]) == [big, b""]
    sealer = FrameSealer(Cipher.AES_256_GCM, b"k" * 32)
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"")
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"x" * (MAX_PLAINTEXT + 1))
    with pytest.raises(LocalProtocolError):
        sealer.seal_into(b"x" * 100, bytearray(sealed_size(100) - 1))
    sealer.seal_fin()
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"x")


def test_the_frame_budget_is_enforced_on_both_ends() -> None:
    sealer = FrameSealer(Cipher.AES_256_GCM, b"k" * 32, max_frames=2)
    frames = [sealer.seal(b"a"), sealer.seal(b"b")]
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"c")
    opener = FrameOpener(Cipher.AES_256_GCM, b"k" * 32, max_frames=1)
    assert opener.decrypt(frames[0][HEADER_SIZE:]) == b"a"
    with pytest.raises(RemoteProtocolError):
        opener.decrypt(frames[1][HEADER_SIZE:])


def test_nonces_advance_and_directions_use_different_keys() -> None:
    keys = keys_for()
    client, server = Channel(keys, Role.CLIENT), Channel(keys, Role.SERVER)
    first, second = client.sealer.seal(b"same"), client.sealer.seal(b"same")
    assert first != second
    assert server.sealer.seal(b"same") not in (first, second)
    # A frame reflected back to its sender does not open.
    with pytest.raises(FrameAuthenticationError):
        client.opener.decrypt(first[HEADER_SIZE:])


# --- handshake -------------------------------------------------------------------------------


def handshake(client_keys_: SessionKeys, server_keys: SessionKeys) -> tuple[Channel, Channel]:
    client, server = Channel(client_keys_, Role.CLIENT), Channel(server_keys, Role.SERVER)
    hello = client.client_hello()
    assert len(hello) == CLIENT_HELLO_SIZE
    assert hello[:SESSION_ID_SIZE] == client_keys_.session_id
    server.accept_client_hello(hello[SESSION_ID_SIZE:])
    answer = server.server_hello()
    assert len(answer) == SERVER_HELLO_SIZE
    client.accept_server_hello(answer)
    return client, server


@pytest.mark.parametrize("cipher", list(Cipher))
def test_the_handshake_proves_the_session_key(cipher: Cipher) -> None:
    client, server = handshake(keys_for(cipher), keys_for(cipher))
    frame = client.sealer.seal(b"payload")
    assert server.opener.decrypt(frame[HEADER_SIZE:]) == b"payload"
    assert client.sealer.counter == 2
    assert server.opener.counter == 2


def test_a_hello_under_other_keys_or_from_another_session_fails() -> None:
    with pytest.raises(FrameAuthenticationError):
        handshake(keys_for(session_id=b"x" * 16), keys_for())
    # The client hello of one session replayed into another session.
    old = Channel(keys_for(session_id=b"o" * 16), Role.CLIENT).client_hello()
    with pytest.raises(FrameAuthenticationError):
        Channel(keys_for(), Role.SERVER).accept_client_hello(old[SESSION_ID_SIZE:])
    # The server hello reflected as a client hello.
    keys = keys_for()
    reflected = Channel(keys, Role.SERVER).server_hello()
    with pytest.raises((FrameAuthenticationError, RemoteProtocolError)):
        Channel(keys, Role.SERVER).accept_client_hello(reflected)
    # A hello of the right size but garbage.
    with pytest.raises((FrameAuthenticationError, RemoteProtocolError)):
        Channel(keys, Role.CLIENT).accept_server_hello(b"\0" * SERVER_HELLO_SIZE)
    with pytest.raises(FrameAuthenticationError):
        Channel(keys, Role.CLIENT).accept_server_hello(b"short")
    with pytest.raises(LocalProtocolError):
        Channel(keys, Role.CLIENT).server_hello()


def test_a_refusal_reason_cannot_forge_log_lines() -> None:
    error = DataChannelRefusedError("busy", "full\nERROR fake line\x1b[31m")
    assert "\n" not in str(error)
    assert "\x1b" not in error.reason
