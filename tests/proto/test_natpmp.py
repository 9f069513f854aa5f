"""NAT-PMP codec (RFC 6886): round trips, the RFC's own byte layout, and any bytes give a
result or a typed error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import LocalProtocolError
from p2pshare.proto.natpmp import (
    ExternalAddress,
    ExternalAddressRequest,
    Mapping,
    MapRequest,
    NatPmpError,
    NatPmpMalformedError,
    NatPmpResultError,
    ResultCode,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
)

ports = st.integers(1, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
protocols = st.sampled_from(["tcp", "udp"])
ipv4 = st.ip_addresses(v=4).map(str)

map_requests = st.builds(MapRequest, protocols, ports, st.integers(0, 0xFFFF), u32)
requests = st.one_of(st.just(ExternalAddressRequest()), map_requests)
responses = st.one_of(
    st.builds(ExternalAddress, u32, ipv4),
    st.builds(Mapping, protocols, u32, ports, ports, u32),
)


@given(requests)
def test_requests_round_trip(request: ExternalAddressRequest | MapRequest) -> None:
    assert decode_request(encode_request(request)) == request


@given(responses)
def test_responses_round_trip(response: ExternalAddress | Mapping) -> None:
    assert decode_response(encode_response(response)) == response


@given(st.binary(max_size=40))
def test_any_bytes_from_a_router_give_a_result_or_a_typed_error(data: bytes) -> None:
    try:
        result = decode_response(data)
    except NatPmpError:
        return
    assert isinstance(result, ExternalAddress | Mapping)
    assert encode_response(result) == data


@given(st.binary(max_size=40))
def test_any_bytes_from_a_client_give_a_request_or_a_typed_error(data: bytes) -> None:
    try:
        result = decode_request(data)
    except NatPmpMalformedError:
        return
    assert encode_request(result) == data


@given(st.sampled_from([0, 1, 2]), st.integers(1, 0xFFFF), u32)
def test_an_error_result_code_is_a_typed_error_naming_the_code(
    opcode: int, code: int, epoch: int
) -> None:
    with pytest.raises(NatPmpResultError) as caught:
        decode_response(encode_error(opcode, code, epoch))
    assert caught.value.code == code
    assert f"result code {code}" in str(caught.value)


def test_result_codes_say_what_the_router_means() -> None:
    refused = encode_error(2, ResultCode.NOT_AUTHORIZED, 5)
    with pytest.raises(NatPmpResultError, match="refuses port mappings"):
        decode_response(refused)


def test_the_bytes_are_the_rfc_layout() -> None:
    """RFC 6886 3.2 and 3.3, byte by byte."""
    assert encode_request(ExternalAddressRequest()) == b"\x00\x00"
    assert encode_request(MapRequest("tcp", 4001, 4001, 7200)) == struct.pack(
        "!BBHHHI", 0, 2, 0, 4001, 4001, 7200
    )
    answer = struct.pack("!BBHIHHI", 0, 130, 0, 99, 4001, 40001, 3600)
    assert decode_response(answer) == Mapping("tcp", 99, 4001, 40001, 3600)
    external = struct.pack("!BBHI4B", 0, 128, 0, 7, 203, 0, 113, 7)
    assert decode_response(external) == ExternalAddress(7, "203.0.113.7")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x00", "too short"),
        (b"\x01\x80\x00\x00" + bytes(8), "version 1"),
        (b"\x00\x02\x00\x00" + bytes(12), "request where an answer"),
        (b"\x00\x83\x00\x00" + bytes(8), "opcode 131"),
        (b"\x00\x80\x00\x00" + bytes(9), "12 bytes"),
        (b"\x00\x82\x00\x00" + bytes(11), "16 bytes"),
        (struct.pack("!BBHIHHI", 0, 130, 0, 1, 0, 4001, 60), "port 0"),
    ],
)
def test_malformed_answers_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(NatPmpMalformedError, match=says):
        decode_response(data)


def test_a_removal_answer_may_name_port_zero() -> None:
    """RFC 6886 3.4: the answer to a deletion has external port 0 and lifetime 0."""
    removed = struct.pack("!BBHIHHI", 0, 130, 0, 1, 4001, 0, 0)
    assert decode_response(removed) == Mapping("tcp", 1, 4001, 0, 0)


def test_requests_that_do_not_fit_are_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(MapRequest("tcp", 0, 0, 60))
    with pytest.raises(LocalProtocolError):
        encode_request(MapRequest("tcp", 70000, 0, 60))
    with pytest.raises(LocalProtocolError):
        encode_error(2, 0, 1)
