"""NAT-PMP (RFC 6886), sans-IO: the requests a client sends a router and its answers.

Only what p2pshare uses: the external address, and TCP (or UDP) port mappings, which a
mapping of lifetime 0 removes. Both directions are here, so the lab gateway
(bench/lab_gateway.py) and the tests' fake routers speak the same bytes as the client.

Every decoder takes any bytes and returns a typed result or raises a
:class:`NatPmpError`: :class:`NatPmpMalformedError` for bytes that are not NAT-PMP, and
:class:`NatPmpResultError` for a well-formed answer whose result code is not success.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from p2pshare.errors import LocalProtocolError, RemoteProtocolError

PORT: Final = 5351
VERSION: Final = 0
# RFC 6886 3.1: the client waits 250 ms, then doubles the wait after each try.
FIRST_WAIT: Final = 0.25
# RFC 6886 3.3: the recommended lifetime of a mapping, in seconds.
RECOMMENDED_LIFETIME: Final = 7200

Protocol = Literal["udp", "tcp"]
_OPCODES: Final[dict[str, int]] = {"udp": 1, "tcp": 2}
_PROTOCOLS: Final[dict[int, Protocol]] = {1: "udp", 2: "tcp"}
OP_EXTERNAL: Final = 0
RESPONSE_BIT: Final = 0x80

_HEADER = struct.Struct("!BBH")  # version, opcode, result code (responses) / reserved
_EXTERNAL_RESPONSE = struct.Struct("!BBHI4s")
_MAP_REQUEST = struct.Struct("!BBHHHI")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")


class ResultCode(IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


_MEANING: Final = {
    ResultCode.UNSUPPORTED_VERSION: "the router does not speak NAT-PMP version 0",
    ResultCode.NOT_AUTHORIZED: "the router refuses port mappings (NAT-PMP is disabled there)",
    ResultCode.NETWORK_FAILURE: "the router has no external address yet (not connected)",
    ResultCode.OUT_OF_RESOURCES: "the router has no room for more port mappings",
    ResultCode.UNSUPPORTED_OPCODE: "the router does not support this NAT-PMP request",
}


class NatPmpError(RemoteProtocolError):
    """A router's NAT-PMP answer that gives no result."""


class NatPmpMalformedError(NatPmpError):
    """Bytes that are not a NAT-PMP message of the kind expected."""


class NatPmpResultError(NatPmpError):
    """A well-formed answer whose result code is an error; ``code`` is the raw value."""

    def __init__(self, code: int) -> None:
        try:
            meaning = _MEANING[ResultCode(code)]
        except (ValueError, KeyError):
            meaning = "the router answered with an unknown error"
        super().__init__(f"{meaning} (NAT-PMP result code {code})")
        self.code = code


@dataclass(frozen=True)
class ExternalAddressRequest:
    pass


@dataclass(frozen=True)
class MapRequest:
    """Map ``internal_port``; ``lifetime`` 0 (with ``external_port`` 0) removes the mapping."""

    protocol: Protocol
    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True)
class ExternalAddress:
    epoch: int
    ip: str


@dataclass(frozen=True)
class Mapping:
    """A router's answer to a :class:`MapRequest`: the port it chose, for how long."""

    protocol: Protocol
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


Request = ExternalAddressRequest | MapRequest
Response = ExternalAddress | Mapping


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{name} {value} is not a 16-bit port")


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{name} {value} does not fit 32 bits")


def encode_request(request: Request) -> bytes:
    if isinstance(request, ExternalAddressRequest):
        return bytes([VERSION, OP_EXTERNAL])
    _check_u16("internal port", request.internal_port)
    _check_u16("external port", request.external_port)
    _check_u32("lifetime", request.lifetime)
    if request.internal_port == 0:
        raise LocalProtocolError("NAT-PMP maps one port; internal port 0 would mean all")
    return _MAP_REQUEST.pack(
        VERSION,
        _OPCODES[request.protocol],
        0,
        request.internal_port,
        request.external_port,
        request.lifetime,
    )


def decode_request(data: bytes) -> Request:
    """A client's request, for a router (the lab gateway, the tests' fakes)."""
    if len(data) < 2:
        raise NatPmpMalformedError(f"a NAT-PMP request of {len(data)} bytes is too short")
    version, opcode = data[0], data[1]
    if version != VERSION:
        raise NatPmpMalformedError(f"NAT-PMP version {version} is not 0")
    if opcode == OP_EXTERNAL:
        if len(data) != 2:
            raise NatPmpMalformedError("an external address request is 2 bytes long")
        return ExternalAddressRequest()
    protocol = _PROTOCOLS.get(opcode)
    if protocol is None:
        raise NatPmpMalformedError(f"NAT-PMP opcode {opcode} is not a request p2pshare knows")
    if len(data) != _MAP_REQUEST.size:
        raise NatPmpMalformedError(f"a mapping request is {_MAP_REQUEST.size} bytes long")
    _, _, _, internal, external, lifetime = _MAP_REQUEST.unpack(data)
    if internal == 0:
        raise NatPmpMalformedError("a mapping request for internal port 0")
    return MapRequest(protocol, internal, external, lifetime)


def encode_response(response: Response) -> bytes:
    """A successful answer (errors: :func:`encode_error`)."""
    _check_u32("epoch", response.epoch)
    if isinstance(response, ExternalAddress):
        packed = ipaddress.IPv4Address(response.ip).packed
        return _EXTERNAL_RESPONSE.pack(
            VERSION, RESPONSE_BIT | OP_EXTERNAL, 0, response.epoch, packed
        )
    _check_u16("internal port", response.internal_port)
    _check_u16("external port", response.external_port)
    _check_u32("lifetime", response.lifetime)
    return _MAP_RESPONSE.pack(
        VERSION,
        RESPONSE_BIT | _OPCODES[response.protocol],
        0,
        response.epoch,
        response.internal_port,
        response.external_port,
        response.lifetime,
    )


def encode_error(opcode: int, code: int, epoch: int) -> bytes:
    """An error answer to a request of ``opcode``, header and epoch only (RFC 6886 3.5)."""
    if code == 0 or not 0 <= code <= 0xFFFF or not 0 <= opcode < RESPONSE_BIT:
        raise LocalProtocolError(f"no NAT-PMP error answer with code {code}, opcode {opcode}")
    _check_u32("epoch", epoch)
    return struct.pack("!BBHI", VERSION, RESPONSE_BIT | opcode, code, epoch)


def decode_response(data: bytes) -> Response:
    """A router's answer: an :class:`ExternalAddress` or a :class:`Mapping`, or an error."""
    if len(data) < _HEADER.size:
        raise NatPmpMalformedError(f"a NAT-PMP answer of {len(data)} bytes is too short")
    version, opcode, code = _HEADER.unpack_from(data)
    if version != VERSION:
        raise NatPmpMalformedError(f"NAT-PMP version {version} is not 0")
    if not opcode & RESPONSE_BIT:
        raise NatPmpMalformedError("a NAT-PMP request where an answer was expected")
    request_op = opcode & ~RESPONSE_BIT
    if request_op != OP_EXTERNAL and request_op not in _PROTOCOLS:
        raise NatPmpMalformedError(f"NAT-PMP answer opcode {opcode} is unknown")
    if code != ResultCode.SUCCESS:
        raise NatPmpResultError(code)
    if request_op == OP_EXTERNAL:
        if len(data) != _EXTERNAL_RESPONSE.size:
            raise NatPmpMalformedError("an external address answer is 12 bytes long")
        _, _, _, epoch, packed = _EXTERNAL_RESPONSE.unpack(data)
        return ExternalAddress(epoch, str(ipaddress.IPv4Address(packed)))
    if len(data) != _MAP_RESPONSE.size:
        raise NatPmpMalformedError("a mapping answer is 16 bytes long")
    _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
    if lifetime and (internal == 0 or external == 0):
        raise NatPmpMalformedError("a mapping answer names port 0")
    return Mapping(_PROTOCOLS[request_op], epoch, internal, external, lifetime)
