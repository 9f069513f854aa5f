"""Fuzzing what arrives on a stream: length-prefixed frames, control messages, and the
transfer protocol's decoder and both of its session state machines (see harness.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import RemoteError
from p2pshare.proto import transfer
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.control import (
    MAX_FRAME,
    ErrorReply,
    Event,
    Reply,
    Request,
    decode_request,
    decode_server_message,
    encode_request,
    encode_server_message,
)
from p2pshare.proto.framing import HEADER_SIZE, FrameDecoder
from p2pshare.proto.transfer import (
    Cancel,
    ChunkData,
    ChunkRequest,
    ClientSession,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    PageReply,
    Role,
    ServerSession,
    TransferDecoder,
)
from tests.fuzz.harness import (
    ValueSeed,
    check_decoder,
    fuzz_inputs,
    fuzz_settings,
    nested,
    pack,
    splits,
)
from tests.fuzz.seeds import CID, KEY, built_manifests, signed_manifests, unpacked

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.fuzz


# --- length-prefixed frames --------------------------------------------------------------

FRAMES = (b"\x00\x00\x00\x03abc\x00\x00\x00\x00", b"\x00\x00\x00\x01x" * 3, b"\x00\x00\x01")


def _frames(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    frames = []
    for piece in pieces:
        decoder.feed(piece)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


@fuzz_settings
@given(fuzz_inputs(FRAMES), st.integers(0, 64), st.data())
def test_frame_decoder(data: bytes, max_size: int, draw: st.DataObject) -> None:
    pieces = draw.draw(splits(data))
    frames = check_decoder(lambda _: _frames(FrameDecoder(max_size), pieces), data)
    if frames is not None:
        # Whole input, or the same frames whichever way the stream was cut.
        assert frames == _frames(FrameDecoder(max_size), [data])
        joined = b"".join(len(f).to_bytes(HEADER_SIZE, "big") + f for f in frames)
        assert data.startswith(joined)


def test_frame_decoder_does_not_buffer_what_a_header_announces() -> None:
    header = MAX_FRAME.to_bytes(HEADER_SIZE, "big")
    assert check_decoder(lambda raw: _frames(FrameDecoder(MAX_FRAME), [raw]), header) == []


# --- control messages --------------------------------------------------------------------

REQUESTS = tuple(
    encode_request(request)[HEADER_SIZE:]
    for request in (
        Request(1, "status"),
        Request(2**53, "share", {"path": "/home/a/b", "progress": True, "n": -1}),
        Request(7, "get", {"ref": str(CID), "out": "x", "opts": [1, None, b"\0"]}),
    )
)
SERVER_MESSAGES = tuple(
    encode_server_message(message)[HEADER_SIZE:]
    for message in (
        Reply(1, {"peer_id": KEY.peer_id, "addrs": ["/ip4/127.0.0.1/tcp/1"]}),
        Reply(0, None),
        ErrorReply(3, "failed", "the share is gone"),
        Event(4, "progress", {"done": 5, "total": 10}),
    )
)


@fuzz_settings
@given(fuzz_inputs(REQUESTS, [ValueSeed(unpacked(r)) for r in REQUESTS]))
def test_control_request(data: bytes) -> None:
    request = check_decoder(decode_request, data)
    if request is not None:
        # Not canonical (keys in any order), but re-encoding reaches a fixed point.
        again = encode_request(request)
        assert encode_request(decode_request(again[HEADER_SIZE:])) == again


def test_deep_nesting_in_a_request_is_a_bad_request() -> None:
    # A version 1000 levels deep once raised RecursionError, which ended the daemon.
    request = unpacked(REQUESTS[1])
    assert isinstance(request, dict)
    for key in request:
        assert check_decoder(decode_request, pack({**request, key: nested(1000)})) is None


@fuzz_settings
@given(fuzz_inputs(SERVER_MESSAGES, [ValueSeed(unpacked(m)) for m in SERVER_MESSAGES]))
def test_control_server_message(data: bytes) -> None:
    message = check_decoder(decode_server_message, data)
    if message is not None:
        again = encode_server_message(message)
        assert encode_server_message(decode_server_message(again[HEADER_SIZE:])) == again


# --- transfer protocol -------------------------------------------------------------------

PAGE = built_manifests()[-1].pages[-1]
CLIENT_MESSAGES: tuple[transfer.Message, ...] = (
    Hello(transfer.VERSION, Role.CLIENT),
    GetManifest(1, CID),
    GetPage(2, CID, 0),
    GetHave(3, CID, 0, 100),
    ChunkRequest(4, CID, 5, 64),
    Cancel(4),
    GetManifest(5, CID),
    transfer.ErrorReply(0, "internal", "bye"),
)
SERVER_MESSAGES_T: tuple[transfer.Message, ...] = (
    Hello(transfer.VERSION, Role.SERVER),
    ManifestReply(1, CID, signed_manifests()[0].data),
    PageReply(2, CID, 0, PAGE),
    HaveReply(3, CID, 0, Bitfield.full(100)),
    ChunkData(4, 0, b"\x01" * 1000),
    ChunkData(4, 1, b"\x02" * 10),
    transfer.ErrorReply(5, "not_available", "gone"),
)


def _streams(messages: tuple[transfer.Message, ...]) -> list[bytes]:
    hello, *rest = (transfer.encode(message) for message in messages)
    return [hello + b"".join(rest), *(hello + frame for frame in rest)]


def _value_seeds(messages: tuple[transfer.Message, ...]) -> list[ValueSeed]:
    """Each non-DATA frame after a valid HELLO, so a mutated body reaches the session."""
    hello = transfer.encode(messages[0])

    def after_hello(kind: int) -> Callable[[bytes], bytes]:
        def wrap(body: bytes) -> bytes:
            frame = bytes([kind]) + body
            return hello + len(frame).to_bytes(HEADER_SIZE, "big") + frame

        return wrap

    seeds = []
    for message in messages:
        if isinstance(message, ChunkData):
            continue
        frame = transfer.encode(message)[HEADER_SIZE:]
        seeds.append(ValueSeed(unpacked(frame[1:]), after_hello(frame[0])))
    return seeds


def _run(side: Role, pieces: list[bytes]) -> tuple[list[transfer.Message], RemoteError | None]:
    """Decode a stream and play it into the receiving session; stop at the first error.

    A RemoteError from the session is the protocol working (as from the decoder);
    it comes back with every message decoded, which the test re-encodes.
    """
    decoder = TransferDecoder(side)
    if side is Role.SERVER:
        receive: Callable[[transfer.Message], object] = ServerSession().receive
    else:
        client = ClientSession()
        client.hello()
        client.get_manifest(CID)
        client.get_page(CID, 0)
        client.get_have(CID, 0, 100)
        client.get_chunks(CID, 0, 2, lambda i: (1000, 10)[i])
        client.get_manifest(CID)
        receive = client.receive
    messages: list[transfer.Message] = []
    for piece in pieces:
        decoder.feed(piece)
        while (message := decoder.next_message()) is not None:
            messages.append(message)
            try:
                receive(message)
            except RemoteError as exc:
                return messages, exc
    return messages, None


def _check_transfer(side: Role, data: bytes, pieces: list[bytes]) -> None:
    played = check_decoder(lambda _: _run(side, pieces), data)
    if played is not None:
        messages, _error = played
        assert messages == _run(side, [data])[0]
        # Not canonical (a HELLO may carry fields of later versions), but every
        # message we accepted is one we would send and read back the same.
        for message in messages:
            decoder = TransferDecoder(side)
            decoder.feed(transfer.encode(message))
            assert decoder.next_message() == message


@fuzz_settings
@given(
    fuzz_inputs(_streams(CLIENT_MESSAGES), _value_seeds(CLIENT_MESSAGES), max_random=1024),
    st.data(),
)
def test_transfer_server_side(data: bytes, draw: st.DataObject) -> None:
    _check_transfer(Role.SERVER, data, draw.draw(splits(data)))


@fuzz_settings
@given(
    fuzz_inputs(_streams(SERVER_MESSAGES_T), _value_seeds(SERVER_MESSAGES_T), max_random=1024),
    st.data(),
)
def test_transfer_client_side(data: bytes, draw: st.DataObject) -> None:
    _check_transfer(Role.CLIENT, data, draw.draw(splits(data)))


def test_transfer_seeds_play_through() -> None:
    """The seeds are a conversation each session accepts to its end, not noise."""
    assert _run(Role.CLIENT, _streams(SERVER_MESSAGES_T)[:1]) == (list(SERVER_MESSAGES_T), None)
    messages, error = _run(Role.SERVER, _streams(CLIENT_MESSAGES)[:1])
    assert messages == list(CLIENT_MESSAGES)
    # The client's closing ERROR ends the stream, as it should.
    assert isinstance(error, transfer.TransferError)
    assert error.code == "internal"
