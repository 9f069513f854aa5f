from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, verify_chunk
from p2pshare.proto.cid import ContentId
from p2pshare.proto.framing import FrameTooLargeError
from p2pshare.proto.manifest import MAX_TOTAL_CHUNKS, expected_chunk_hash
from p2pshare.proto.signed_manifest import decode_signed_manifest
from p2pshare.proto.transfer import (
    DATA_HEADER_SIZE,
    MAX_CHUNKS_PER_REQUEST,
    MAX_CONTROL_FRAME,
    MAX_ERROR_MESSAGE,
    MAX_OUTSTANDING_REQUESTS,
    MAX_REQ_ID,
    VERSION,
    BusyError,
    Cancel,
    ChunkData,
    ChunkRequest,
    ClientRequest,
    ClientSession,
    ErrorCode,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    Message,
    MessageType,
    NotAvailableError,
    PageReply,
    Response,
    Role,
    ServerMessage,
    ServerSession,
    TransferDecoder,
    TransferError,
    UnknownContentError,
    UnsupportedVersionError,
    closing_error,
    encode,
    encode_data_header,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

    from p2pshare.proto.signed_manifest import SignedManifest

# --- strategies ----------------------------------------------------------------------

cids = st.binary(min_size=32, max_size=32).map(ContentId)
req_ids = st.integers(1, MAX_REQ_ID)
roles = st.sampled_from(Role)
codes = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
texts = st.text(max_size=40)


@st.composite
def chunk_ranges(draw: st.DrawFn, max_count: int) -> tuple[int, int]:
    count = draw(st.integers(1, max_count))
    first = draw(st.integers(0, MAX_TOTAL_CHUNKS - count) | st.integers(0, 100))
    return first, count


@st.composite
def have_replies(draw: st.DrawFn) -> HaveReply:
    first, count = draw(chunk_ranges(300))
    have = Bitfield(count)
    for index in draw(st.sets(st.integers(0, count - 1), max_size=20)):
        have.set(index)
    return HaveReply(draw(req_ids), draw(cids), first, have)


hellos = st.builds(Hello, st.integers(0, MAX_REQ_ID) | st.just(VERSION), roles)
errors = st.builds(ErrorReply, st.integers(0, MAX_REQ_ID), codes, texts)
client_messages: st.SearchStrategy[Message] = st.one_of(
    hellos,
    errors,
    st.builds(GetManifest, req_ids, cids),
    st.builds(GetPage, req_ids, cids, st.integers(0, 16383)),
    st.builds(lambda r, c, fc: GetHave(r, c, *fc), req_ids, cids, chunk_ranges(8 * 2**20)),
    st.builds(
        lambda r, c, fc: ChunkRequest(r, c, *fc),
        req_ids,
        cids,
        chunk_ranges(MAX_CHUNKS_PER_REQUEST),
    ),
    st.builds(Cancel, req_ids),
)
server_messages: st.SearchStrategy[Message] = st.one_of(
    hellos,
    errors,
    st.builds(ManifestReply, req_ids, cids, st.binary(min_size=1, max_size=200)),
    st.builds(
        PageReply,
        req_ids,
        cids,
        st.integers(0, 16383),
        st.integers(1, 6).map(lambda n: bytes(range(32)) * n),
    ),
    have_replies(),
    st.builds(
        ChunkData,
        req_ids,
        st.integers(0, MAX_TOTAL_CHUNKS - 1),
        st.binary(min_size=1, max_size=300),
    ),
)
streams = st.one_of(
    st.tuples(st.just(Role.SERVER), st.lists(client_messages, min_size=1, max_size=6)),
    st.tuples(st.just(Role.CLIENT), st.lists(server_messages, min_size=1, max_size=6)),
)


# --- helpers -------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def decode_pieces(side: Role, pieces: list[bytes]) -> list[Message]:
    decoder = TransferDecoder(side)
    messages = []
    for piece in pieces:
        decoder.feed(piece)
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    assert decoder.buffered == 0
    return messages


def decode_all(side: Role, data: bytes) -> list[Message]:
    """Messages until the data ends or the first protocol error."""
    decoder = TransferDecoder(side)
    decoder.feed(data)
    messages = []
    with contextlib.suppress(RemoteProtocolError):
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    return messages


def frame(kind: int, body: bytes) -> bytes:
    return (len(body) + 1).to_bytes(4, "big") + bytes([kind]) + body


CID = ContentId(bytes(range(32)))
OTHER_CID = ContentId(bytes(32))


# --- codec ---------------------------------------------------------------------------


@given(streams)
def test_round_trip(case: tuple[Role, list[Message]]) -> None:
    side, messages = case
    for message in messages:
        assert decode_pieces(side, [encode(message)]) == [message]


@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_decodes_identically(case: tuple[Role, list[Message]], cuts: list[int]) -> None:
    side, messages = case
    stream = b"".join(encode(m) for m in messages)
    assert decode_pieces(side, split(stream, cuts)) == messages


@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_feeding_without_draining_keeps_the_order(
    case: tuple[Role, list[Message]], cuts: list[int]
) -> None:
    side, messages = case
    decoder = TransferDecoder(side)
    for piece in split(b"".join(encode(m) for m in messages), cuts):
        decoder.feed(piece)
    decoded = []
    while (message := decoder.next_message()) is not None:
        decoded.append(message)
    assert decoded == messages


@given(roles, st.binary(max_size=600))
def test_arbitrary_bytes_give_messages_or_a_protocol_error(side: Role, data: bytes) -> None:
    for message in decode_all(side, data):
        encode(message)  # whatever decodes is a valid message


@given(roles, st.sampled_from(MessageType), st.binary(max_size=200))
def test_arbitrary_bodies_give_messages_or_a_protocol_error(
    side: Role, kind: MessageType, body: bytes
) -> None:
    for message in decode_all(side, frame(kind, body)):
        encode(message)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=40)
    | st.floats(),
    lambda children: st.lists(children, max_size=6),
    max_leaves=10,
)


@given(roles, st.sampled_from(MessageType), values)
def test_arbitrary_msgpack_bodies_are_handled(side: Role, kind: MessageType, value: object) -> None:
    for message in decode_all(side, frame(kind, msgpack.packb(value, use_bin_type=True))):
        encode(message)


@given(streams, st.data())
def test_flipped_bits_give_an_error_or_valid_messages(
    case: tuple[Role, list[Message]], data: st.DataObject
) -> None:
    side, messages = case
    stream = bytearray(b"".join(encode(m) for m in messages))
    bit = data.draw(st.integers(0, 8 * len(stream) - 1))
    stream[bit // 8] ^= 0x80 >> (bit % 8)
    for message in decode_all(side, bytes(stream)):
        encode(message)


def test_data_payload_is_a_slice_of_the_received_bytes() -> None:
    received = encode(ChunkData(7, 3, b"x" * 1000)) + encode(ChunkData(7, 4, b"y" * 10))
    decoder = TransferDecoder(Role.CLIENT)
    decoder.feed(received)
    first = decoder.next_message()
    assert isinstance(first, ChunkData)
    assert isinstance(first.payload, memoryview)
    assert first.payload.obj is received
    assert first.payload.readonly
    assert first.payload == b"x" * 1000


def test_split_data_payload_is_read_only() -> None:
    received = encode(ChunkData(7, 3, b"x" * 1000))
    decoder = TransferDecoder(Role.CLIENT)
    decoder.feed(received[:500])
    assert decoder.next_message() is None
    decoder.feed(received[500:])
    message = decoder.next_message()
    assert isinstance(message, ChunkData)
    assert isinstance(message.payload, memoryview)
    assert message.payload.readonly
    assert message.payload == b"x" * 1000


@pytest.mark.parametrize("head_cut", [1, 5, 4 + DATA_HEADER_SIZE])
def test_a_chunk_fed_whole_after_its_header_is_sliced_not_copied(head_cut: int) -> None:
    frame_bytes = encode(ChunkData(7, 3, b"x" * 1000))
    chunk = frame_bytes[4 + DATA_HEADER_SIZE :]
    decoder = TransferDecoder(Role.CLIENT)
    decoder.feed(frame_bytes[:head_cut])
    assert decoder.next_message() is None
    decoder.feed(frame_bytes[head_cut : 4 + DATA_HEADER_SIZE])
    assert decoder.next_message() is None
    decoder.feed(chunk)
    message = decoder.next_message()
    assert message == ChunkData(7, 3, b"x" * 1000)
    assert isinstance(message.payload, memoryview)
    assert message.payload.obj is chunk
    assert message.payload.readonly
    assert decoder.buffered == 0


def test_data_header_plus_payload_is_the_frame() -> None:
    payload = bytes(range(256)) * 4
    assert encode_data_header(5, 9, len(payload)) + payload == encode(ChunkData(5, 9, payload))
    assert len(encode_data_header(5, 9, 1)) == 4 + DATA_HEADER_SIZE


@pytest.mark.parametrize(
    ("side", "header", "error"),
    [
        # Larger than any frame at all: refused on the length alone.
        (Role.CLIENT, (2**31).to_bytes(4, "big"), FrameTooLargeError),
        (Role.SERVER, (MAX_CONTROL_FRAME + 1).to_bytes(4, "big"), FrameTooLargeError),
        # A control frame over its own limit, though DATA could be that large.
        (
            Role.CLIENT,
            (MAX_CONTROL_FRAME + 1).to_bytes(4, "big") + bytes([MessageType.HELLO]),
            FrameTooLargeError,
        ),
        (
            Role.CLIENT,
            (2**24 + DATA_HEADER_SIZE + 1).to_bytes(4, "big") + bytes([MessageType.DATA]),
            FrameTooLargeError,
        ),
        # Types the receiving side never accepts, and unknown ones.
        (Role.SERVER, (100).to_bytes(4, "big") + bytes([MessageType.DATA]), RemoteProtocolError),
        (Role.CLIENT, (10).to_bytes(4, "big") + bytes([MessageType.REQUEST]), RemoteProtocolError),
        (Role.CLIENT, (10).to_bytes(4, "big") + b"\x7f", RemoteProtocolError),
        (Role.CLIENT, (0).to_bytes(4, "big"), RemoteProtocolError),
    ],
)
def test_bad_headers_are_refused_before_the_body(
    side: Role, header: bytes, error: type[Exception]
) -> None:
    decoder = TransferDecoder(side)
    decoder.feed(header)
    with pytest.raises(error):
        decoder.next_message()
    assert decoder.buffered <= len(header)
    # The error is final.
    decoder.feed(b"\0" * 10)
    with pytest.raises(error):
        decoder.next_message()


def test_header_split_byte_by_byte_is_still_checked() -> None:
    header = (MAX_CONTROL_FRAME + 1).to_bytes(4, "big") + bytes([MessageType.HAVE])
    decoder = TransferDecoder(Role.CLIENT)
    for byte in header[:4]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(header[4:])
    assert decoder.next_message() is None  # a HAVE may be that large
    decoder = TransferDecoder(Role.CLIENT)
    for byte in frame(MessageType.HELLO, bytes(MAX_CONTROL_FRAME))[:5]:
        decoder.feed(bytes([byte]))
    with pytest.raises(FrameTooLargeError):
        decoder.next_message()


def test_a_client_may_lower_the_data_limit() -> None:
    decoder = TransferDecoder(Role.CLIENT, max_chunk_size=MIN_CHUNK_SIZE)
    decoder.feed(encode_data_header(1, 0, MIN_CHUNK_SIZE + 1))
    with pytest.raises(FrameTooLargeError):
        decoder.next_message()


def test_a_later_hello_with_more_fields_still_decodes() -> None:
    body = msgpack.packb([2, "client", {"new": 1}, [1, 2]], use_bin_type=True)
    [message] = decode_all(Role.SERVER, frame(MessageType.HELLO, body))
    assert message == Hello(2, Role.CLIENT)


@pytest.mark.parametrize(
    "message",
    [
        GetManifest(0, CID),
        GetManifest(MAX_REQ_ID + 1, CID),
        ChunkRequest(1, CID, 0, MAX_CHUNKS_PER_REQUEST + 1),
        ChunkRequest(1, CID, 0, 0),
        ChunkRequest(1, CID, MAX_TOTAL_CHUNKS - 1, 2),
        GetHave(1, CID, -1, 3),
        GetPage(True, CID, 0),
        GetManifest(1, b"not a cid"),  # type: ignore[arg-type]
        PageReply(1, CID, 0, b"x" * 31),
        ManifestReply(1, CID, b""),
        ErrorReply(1, "Not Valid", "x"),
        ErrorReply(1, ErrorCode.BUSY, "x" * (MAX_ERROR_MESSAGE + 1)),
        ErrorReply(1, ErrorCode.BUSY, "\udc80"),
        ChunkData(0, 1, b"x"),
        ChunkData(1, 1, b""),
        ChunkData(1, 1, "text"),  # type: ignore[arg-type]
        Hello(-1, Role.CLIENT),
        Hello(1, "peer"),  # type: ignore[arg-type]
    ],
)
def test_encoding_a_forbidden_message_is_a_local_error(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(message)


def test_error_codes_map_to_typed_exceptions() -> None:
    exc = ErrorReply(4, ErrorCode.UNKNOWN_CONTENT, "no such share\x1b[2J").exception()
    assert isinstance(exc, UnknownContentError)
    assert exc.req_id == 4
    assert "\x1b" not in str(exc)
    assert isinstance(ErrorReply(0, ErrorCode.BUSY, "").exception(), BusyError)
    future = ErrorReply(0, "try_tomorrow", "later").exception()
    assert type(future) is TransferError
    assert future.code == "try_tomorrow"


def test_closing_error_keeps_codes_and_hides_internals() -> None:
    assert closing_error(NotAvailableError("gone")) == ErrorReply(
        0, ErrorCode.NOT_AVAILABLE, "gone"
    )
    assert closing_error(RemoteProtocolError("bad")).code == ErrorCode.BAD_REQUEST
    internal = closing_error(KeyError("/home/secret/path"))
    assert internal.code == ErrorCode.INTERNAL
    assert "secret" not in internal.message
    long = closing_error(RemoteProtocolError("\udc80" + "x" * 5000))
    encode(long)


# --- sessions ------------------------------------------------------------------------


def chunk_len(length: int = 100) -> Callable[[int], int]:
    return lambda _index: length


def started_pair(
    max_outstanding: int = MAX_OUTSTANDING_REQUESTS,
) -> tuple[ClientSession, ServerSession]:
    client = ClientSession(max_outstanding=max_outstanding)
    server = ServerSession(max_outstanding=max_outstanding)
    answer = server.receive(client.hello())
    assert answer == Hello(VERSION, Role.SERVER)
    assert client.receive(answer) is None
    assert client.ready
    return client, server


def test_client_walks_through_a_chunk_request() -> None:
    client, server = started_pair()
    request = client.get_chunks(CID, 10, 3, chunk_len())
    assert server.receive(request) == request
    for index in request.chunks:
        response = client.receive(server.data(request.req_id, index, b"z" * 100))
        assert isinstance(response, Response)
        assert response.request == request
        assert response.finished == (index == 12)
    assert client.outstanding == 0
    assert server.outstanding == 0


@pytest.mark.parametrize(
    "bad",
    [
        ChunkData(99, 10, b"z" * 100),  # unknown request
        ChunkData(1, 11, b"z" * 100),  # skips chunk 10
        ChunkData(1, 10, b"z" * 99),  # wrong length
        ManifestReply(1, CID, b"m"),  # a reply to a chunk request
        HaveReply(99, CID, 0, Bitfield(1)),
        ErrorReply(99, ErrorCode.BUSY, ""),
        Hello(VERSION, Role.SERVER),  # twice
        GetManifest(5, CID),  # the client's own kind of message
    ],
)
def test_client_rejects_what_it_did_not_ask_for(bad: Message) -> None:
    client, _server = started_pair()
    assert client.get_chunks(CID, 10, 2, chunk_len()).req_id == 1
    with pytest.raises(RemoteProtocolError):
        client.receive(bad)


def test_client_rejects_data_for_a_metadata_request_and_mismatched_replies() -> None:
    client, _server = started_pair()
    manifest = client.get_manifest(CID)
    page = client.get_page(CID, 2)
    have = client.get_have(CID, 0, 10)
    for bad in (
        ChunkData(manifest.req_id, 0, b"x"),
        ManifestReply(manifest.req_id, OTHER_CID, b"m"),
        PageReply(page.req_id, CID, 3, bytes(32)),
        HaveReply(have.req_id, CID, 0, Bitfield(11)),
        HaveReply(have.req_id, CID, 1, Bitfield(10)),
        PageReply(manifest.req_id, CID, 2, bytes(32)),
    ):
        with pytest.raises(RemoteProtocolError):
            client.receive(bad)


def test_client_accepts_matching_replies() -> None:
    client, _server = started_pair()
    requests: list[ClientRequest] = [
        client.get_manifest(CID),
        client.get_page(CID, 2),
        client.get_have(CID, 5, 10),
    ]
    replies: list[ServerMessage] = [
        ManifestReply(requests[0].req_id, CID, b"m"),
        PageReply(requests[1].req_id, CID, 2, bytes(32)),
        HaveReply(requests[2].req_id, CID, 5, Bitfield.full(10)),
    ]
    for request, reply in zip(requests, replies, strict=True):
        assert client.receive(reply) == Response(request, reply, finished=True)
    assert client.outstanding == 0


def test_server_must_say_hello_first() -> None:
    client = ClientSession()
    client.hello()
    request = client.get_chunks(CID, 0, 1, chunk_len())
    with pytest.raises(RemoteProtocolError):
        client.receive(ChunkData(request.req_id, 0, b"z" * 100))


def test_connection_error_from_the_server_is_raised_typed() -> None:
    client = ClientSession()
    client.hello()
    with pytest.raises(UnsupportedVersionError):
        client.receive(ErrorReply(0, ErrorCode.UNSUPPORTED_VERSION, "I speak 2"))
    assert not client.can_request


def test_client_refuses_a_server_of_another_version() -> None:
    client = ClientSession()
    client.hello()
    with pytest.raises(UnsupportedVersionError):
        client.receive(Hello(VERSION + 1, Role.SERVER))


def test_request_errors_end_the_request() -> None:
    client, server = started_pair()
    request = client.get_chunks(CID, 0, 4, chunk_len())
    server.receive(request)
    error = server.fail(request.req_id, NotAvailableError("stale file"))
    response = client.receive(error)
    assert response is not None
    assert response.finished
    assert isinstance(error, ErrorReply)
    assert isinstance(error.exception(), NotAvailableError)
    assert client.outstanding == server.outstanding == 0


def test_client_caps_outstanding_requests() -> None:
    client, _server = started_pair(max_outstanding=2)
    client.get_manifest(CID)
    client.get_chunks(CID, 0, 1, chunk_len())
    assert not client.can_request
    with pytest.raises(LocalProtocolError):
        client.get_have(CID, 0, 1)


def test_client_refuses_invalid_requests_of_its_caller() -> None:
    client = ClientSession()
    with pytest.raises(LocalProtocolError):
        client.get_manifest(CID)  # before hello()
    client.hello()
    with pytest.raises(LocalProtocolError):
        client.get_chunks(CID, 0, MAX_CHUNKS_PER_REQUEST + 1, chunk_len())
    with pytest.raises(LocalProtocolError):
        client.get_chunks(CID, 0, 2, chunk_len(0))
    with pytest.raises(LocalProtocolError):
        ClientSession(max_outstanding=MAX_OUTSTANDING_REQUESTS + 1)
    assert client.outstanding == 0


def test_cancel_keeps_the_request_until_the_server_ends_it() -> None:
    client, server = started_pair()
    request = client.get_chunks(CID, 0, 4, chunk_len())
    server.receive(request)
    first = server.data(request.req_id, 0, b"z" * 100)
    cancel = client.cancel(request.req_id)
    assert cancel == Cancel(request.req_id)
    assert client.cancel(request.req_id) is None  # once is enough
    # DATA the server sent before it saw CANCEL is still valid.
    response = client.receive(first)
    assert response is not None
    assert not response.finished
    assert server.receive(cancel) is None
    assert server.cancelled(request.req_id)
    end = server.data(request.req_id, 1, b"z" * 100)
    assert end == ErrorReply(request.req_id, ErrorCode.CANCELLED, "cancelled by the client")
    assert server.outstanding == 0
    response = client.receive(end)
    assert response is not None
    assert response.finished
    assert client.outstanding == 0


def test_cancel_after_the_last_chunk_is_harmless() -> None:
    client, server = started_pair()
    request = client.get_chunks(CID, 0, 1, chunk_len())
    server.receive(request)
    last = server.data(request.req_id, 0, b"z" * 100)
    cancel = client.cancel(request.req_id)
    assert cancel is not None
    assert server.receive(cancel) is None  # already finished: ignored
    response = client.receive(last)
    assert response is not None
    assert response.finished
    assert client.cancel(request.req_id) is None


def test_cancelled_metadata_request_ends_with_cancelled() -> None:
    client, server = started_pair()
    request = client.get_manifest(CID)
    server.receive(request)
    cancel = client.cancel(request.req_id)
    assert cancel is not None
    server.receive(cancel)
    end = server.reply(ManifestReply(request.req_id, CID, b"m"))
    assert isinstance(end, ErrorReply)
    assert end.code == ErrorCode.CANCELLED
    client.receive(end)
    assert client.outstanding == 0


def test_request_ids_are_not_reused_while_outstanding() -> None:
    client, _server = started_pair()
    ids = {client.get_have(CID, 0, 1).req_id for _ in range(MAX_OUTSTANDING_REQUESTS)}
    assert len(ids) == MAX_OUTSTANDING_REQUESTS


def test_server_answers_busy_beyond_its_limit() -> None:
    server = ServerSession(max_outstanding=2)
    server.receive(Hello(VERSION, Role.CLIENT))
    assert server.receive(GetManifest(1, CID)) == GetManifest(1, CID)
    assert server.receive(ChunkRequest(2, CID, 0, 4)) == ChunkRequest(2, CID, 0, 4)
    busy = server.receive(ChunkRequest(3, CID, 0, 4))
    assert isinstance(busy, ErrorReply)
    assert busy.req_id == 3
    assert isinstance(busy.exception(), BusyError)
    assert server.outstanding == 2
    server.reply(ManifestReply(1, CID, b"m"))
    assert server.receive(ChunkRequest(3, CID, 0, 4)) == ChunkRequest(3, CID, 0, 4)


@pytest.mark.parametrize(
    "messages",
    [
        [GetManifest(1, CID)],  # before HELLO
        [Hello(VERSION, Role.CLIENT), Hello(VERSION, Role.CLIENT)],
        [Hello(VERSION, Role.SERVER)],
        [Hello(VERSION, Role.CLIENT), GetManifest(1, CID), GetPage(1, CID, 0)],  # id in use
        [Hello(VERSION, Role.CLIENT), ErrorReply(3, ErrorCode.BUSY, "")],
        [Hello(VERSION, Role.CLIENT), ChunkData(1, 0, b"x")],
    ],
)
def test_server_rejects_protocol_violations(messages: list[Message]) -> None:
    server = ServerSession()
    *before, last = messages
    for message in before:
        server.receive(message)
    with pytest.raises(RemoteProtocolError):
        server.receive(last)


def test_server_refuses_another_version_with_a_typed_error() -> None:
    server = ServerSession()
    with pytest.raises(UnsupportedVersionError) as info:
        server.receive(Hello(VERSION + 1, Role.CLIENT))
    reply = closing_error(info.value)
    assert reply.req_id == 0
    assert reply.code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(RemoteProtocolError):
        server.receive(Hello(VERSION, Role.CLIENT))


def test_server_catches_its_shells_mistakes() -> None:
    server = ServerSession()
    server.receive(Hello(VERSION, Role.CLIENT))
    server.receive(ChunkRequest(1, CID, 5, 2))
    server.receive(GetPage(2, CID, 0))
    with pytest.raises(LocalProtocolError):
        server.data(1, 6, b"x")  # chunk 5 comes first
    with pytest.raises(LocalProtocolError):
        server.data(2, 0, b"x")  # not a chunk request
    with pytest.raises(LocalProtocolError):
        server.data(3, 0, b"x")  # unknown
    with pytest.raises(LocalProtocolError):
        server.reply(PageReply(2, CID, 1, bytes(32)))  # wrong page
    server.data(1, 5, b"x")
    server.data(1, 6, b"x")
    with pytest.raises(LocalProtocolError):
        server.data(1, 7, b"x")  # finished


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(1, MAX_CHUNKS_PER_REQUEST)),
        min_size=1,
        max_size=MAX_OUTSTANDING_REQUESTS,
    ),
    st.randoms(use_true_random=False),
)
def test_interleaved_data_over_the_wire_completes_every_request(
    ranges: list[tuple[int, int]], rng: random.Random
) -> None:
    client = ClientSession()
    server = ServerSession()
    server_in, client_in = TransferDecoder(Role.SERVER), TransferDecoder(Role.CLIENT)

    def to_server(message: Message) -> list[Message]:
        server_in.feed(encode(message))
        received = []
        while (decoded := server_in.next_message()) is not None:
            received.append(decoded)
        return received

    wire = bytearray()
    [hello] = to_server(client.hello())
    wire += encode(server.receive(hello))  # type: ignore[arg-type]
    length = chunk_len(7)
    accepted: list[ChunkRequest] = []
    for first, count in ranges:
        [request] = to_server(client.get_chunks(CID, first, count, length))
        served = server.receive(request)
        assert isinstance(served, ChunkRequest)
        accepted.append(served)
    # The server interleaves the requests' chunks at random, each request in order.
    cursors = {request.req_id: iter(request.chunks) for request in accepted}
    while cursors:
        req_id = rng.choice(sorted(cursors))
        index = next(cursors[req_id], None)
        if index is None:
            del cursors[req_id]
            continue
        wire += encode(server.data(req_id, index, bytes([index % 256]) * 7))
    finished = set()
    for piece in split(bytes(wire), [rng.randrange(len(wire)) for _ in range(10)]):
        client_in.feed(piece)
        while (message := client_in.next_message()) is not None:
            response = client.receive(message)
            if response is not None and response.finished:
                finished.add(response.request.req_id)
    assert finished == {request.req_id for request in accepted}
    assert client.outstanding == server.outstanding == 0


def test_a_real_share_end_to_end(
    make_share: Callable[[Mapping[str, bytes]], SignedManifest],
) -> None:
    files = {"a.bin": bytes(range(256)) * 150, "b/c.txt": b"hello", "empty": b""}
    signed = make_share(files)
    shared = b"".join(files[path] for path in sorted(files))
    client = ClientSession()
    server = ServerSession()
    server_in, client_in = TransferDecoder(Role.SERVER), TransferDecoder(Role.CLIENT)

    def exchange(message: Message) -> list[Response]:
        """Send a client message; the server answers it in full; return the responses."""
        server_in.feed(encode(message))
        wire = b""
        while (received := server_in.next_message()) is not None:
            action = server.receive(received)
            match action:
                case Hello() | ErrorReply():
                    wire += encode(action)
                case GetManifest(req_id=req_id, cid=cid) if cid != signed.cid:
                    wire += encode(server.fail(req_id, UnknownContentError("not shared here")))
                case GetManifest(req_id=req_id, cid=cid):
                    wire += encode(server.reply(ManifestReply(req_id, cid, signed.data)))
                case GetHave(req_id=req_id, cid=cid, first_chunk=first, count=count):
                    wire += encode(
                        server.reply(HaveReply(req_id, cid, first, Bitfield.full(count)))
                    )
                case ChunkRequest(req_id=req_id, first_chunk=first, count=count):
                    for index in range(first, first + count):
                        where = signed.manifest.locate_chunk(index)
                        start = sum(
                            len(files[e.path]) for e in signed.manifest.entries[: where.entry_index]
                        )
                        chunk = shared[start + where.offset : start + where.offset + where.length]
                        wire += encode(server.data(req_id, index, chunk))
        responses = []
        for byte in range(0, len(wire), 1000):
            client_in.feed(wire[byte : byte + 1000])
            while (received := client_in.next_message()) is not None:
                response = client.receive(received)
                if response is not None:
                    responses.append(response)
        return responses

    assert exchange(client.hello()) == []
    assert client.ready
    [reply] = exchange(client.get_manifest(signed.cid))
    assert isinstance(reply.message, ManifestReply)
    manifest = decode_signed_manifest(reply.message.data, signed.cid).manifest
    total = manifest.total_chunks
    assert total == 4
    [have] = exchange(client.get_have(signed.cid, 0, total))
    assert isinstance(have.message, HaveReply)
    assert list(have.message.have.iter_missing()) == []
    progress = Bitfield(total)
    responses = exchange(
        client.get_chunks(signed.cid, 0, total, lambda i: manifest.locate_chunk(i).length)
    )
    for response in responses:
        assert isinstance(response.message, ChunkData)
        index = response.message.chunk_index
        verify_chunk(expected_chunk_hash(manifest, index), response.message.payload)
        progress.set(index)
    assert progress.complete
    assert [r.finished for r in responses] == [False] * (total - 1) + [True]
    [missing] = exchange(client.get_manifest(ContentId(bytes(32))))
    assert missing.finished
    assert isinstance(missing.message, ErrorReply)
    assert isinstance(missing.message.exception(), UnknownContentError)
    assert client.outstanding == 0
