from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.control import (
    MAX_FRAME,
    VERSION,
    BadRequestError,
    ErrorCode,
    ErrorReply,
    Event,
    Reply,
    Request,
    decode_request,
    decode_server_message,
    encode_request,
    encode_server_message,
)
from p2pshare.proto.framing import FrameDecoder

ids = st.integers(min_value=1, max_value=2**53)
names = st.text(min_size=1, max_size=64)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
params = st.dictionaries(st.text(max_size=16), values, max_size=6)

requests = st.builds(Request, ids, names, params)
server_messages = st.one_of(
    st.builds(Reply, ids | st.just(0), values),
    st.builds(ErrorReply, ids | st.just(0), names, st.text()),
    st.builds(Event, ids, names, params),
)


def payload(frame: bytes) -> bytes:
    decoder = FrameDecoder(MAX_FRAME)
    decoder.feed(frame)
    result = decoder.next_frame()
    assert result is not None
    assert decoder.buffered == 0
    return result


@given(requests)
def test_request_round_trip(request: Request) -> None:
    assert decode_request(payload(encode_request(request))) == request


@given(server_messages)
def test_server_message_round_trip(message: Reply | ErrorReply | Event) -> None:
    assert decode_server_message(payload(encode_server_message(message))) == message


@given(st.lists(requests, min_size=1, max_size=5), st.lists(st.integers(0), max_size=10))
def test_requests_survive_any_split(batch: list[Request], cuts: list[int]) -> None:
    stream = b"".join(encode_request(r) for r in batch)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = FrameDecoder(MAX_FRAME)
    decoded = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        decoder.feed(stream[a:b])
        while (frame := decoder.next_frame()) is not None:
            decoded.append(decode_request(frame))
    assert decoded == batch


@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_a_request_or_a_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequestError):
        decode_request(data)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_a_message_or_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_server_message(data)


@given(values)
def test_arbitrary_msgpack_values_are_handled(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    for decode in (decode_request, decode_server_message):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


def test_bad_request_keeps_the_request_id_when_it_is_readable() -> None:
    data = msgpack.packb({"v": VERSION, "id": 7, "method": "", "params": {}})
    with pytest.raises(BadRequestError) as info:
        decode_request(data)
    assert info.value.request_id == 7


def test_unknown_version_is_reported_as_such() -> None:
    data = msgpack.packb({"v": 99, "id": 3, "method": "id", "params": {}})
    with pytest.raises(BadRequestError) as info:
        decode_request(data)
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION
    assert info.value.request_id == 3


@pytest.mark.parametrize(
    "obj",
    [
        {"v": VERSION, "id": 0, "method": "id", "params": {}},
        {"v": VERSION, "id": True, "method": "id", "params": {}},
        {"v": VERSION, "id": 1, "method": "id"},
        {"v": VERSION, "id": 1, "method": "id", "params": []},
        {"v": VERSION, "id": 1, "method": "x" * 65, "params": {}},
        [1, 2, 3],
    ],
)
def test_malformed_requests_are_refused(obj: object) -> None:
    with pytest.raises(BadRequestError):
        decode_request(msgpack.packb(obj))


def test_unencodable_reply_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_server_message(Reply(1, object()))


def test_a_request_with_a_name_that_is_not_utf8_is_refused_not_escaped() -> None:
    """Escaping a path sent to the daemon would name another file; the CLI must say so."""
    with pytest.raises(LocalProtocolError):
        encode_request(Request(1, "share", {"path": "/tmp/bad\udcff"}))
