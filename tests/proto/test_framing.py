from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError
from p2pshare.proto.framing import FrameDecoder, FrameTooLargeError, encode_frame

LIMIT = 1024


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode_all(pieces: list[bytes]) -> list[bytes]:
    decoder = FrameDecoder(LIMIT)
    frames = []
    for piece in pieces:
        decoder.feed(piece)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


@given(
    st.lists(st.binary(max_size=LIMIT), max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_any_split_gives_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p, LIMIT) for p in payloads)
    assert decode_all(split(stream, cuts)) == payloads


def test_byte_at_a_time() -> None:
    stream = encode_frame(b"hello", LIMIT) + encode_frame(b"", LIMIT)
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == [b"hello", b""]


def test_oversize_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(LIMIT)
    decoder.feed((LIMIT + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()
    assert decoder.buffered == 4
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()


def test_encoding_an_oversize_frame_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (LIMIT + 1), LIMIT)


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_frames_or_the_typed_error(data: bytes) -> None:
    decoder = FrameDecoder(LIMIT)
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
    except FrameTooLargeError:
        pass
