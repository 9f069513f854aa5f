"""A NAT-PMP router for tests: a trio UDP server on loopback that answers with the codec's
bytes, or stays silent, or says something else, as a test sets it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio

from p2pshare.proto.natpmp import (
    ExternalAddress,
    Mapping,
    MapRequest,
    NatPmpMalformedError,
    decode_request,
    encode_response,
)

EXTERNAL_IP = "203.0.113.7"


@dataclass
class FakeGateway:
    """Grants every mapping as asked (external port = the one suggested, or the next one
    when ``shift``); ``silent`` drops every request, ``reply`` replaces every answer.
    ``datagrams`` counts everything received, requests or not."""

    port: int = 0
    external_ip: str = EXTERNAL_IP
    lifetime_cap: int = 3600
    shift: bool = False
    silent: bool = False
    reply: bytes | None = None
    requests: list[object] = field(default_factory=list)
    mappings: dict[int, int] = field(default_factory=dict)
    datagrams: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                data, peer = await sock.recvfrom(64)
                answer = self.answer(data)
                if answer is not None:
                    await sock.sendto(answer, peer)

    def answer(self, data: bytes) -> bytes | None:
        self.datagrams += 1
        try:
            request = decode_request(data)
        except NatPmpMalformedError:
            return None
        self.requests.append(request)
        if self.silent:
            return None
        if self.reply is not None:
            return self.reply
        if not isinstance(request, MapRequest):
            return encode_response(ExternalAddress(1, self.external_ip))
        if request.lifetime == 0:
            self.mappings.pop(request.internal_port, None)
            return encode_response(Mapping(request.protocol, 1, request.internal_port, 0, 0))
        external = request.external_port or request.internal_port
        if self.shift and external == request.internal_port:
            external = external + 1 if external < 0xFFFF else external - 1
        self.mappings[request.internal_port] = external
        lifetime = min(request.lifetime, self.lifetime_cap)
        return encode_response(
            Mapping(request.protocol, 1, request.internal_port, external, lifetime)
        )

    def map_requests(self) -> list[MapRequest]:
        return [r for r in self.requests if isinstance(r, MapRequest) and r.lifetime]

    def removals(self) -> list[MapRequest]:
        return [r for r in self.requests if isinstance(r, MapRequest) and not r.lifetime]
