"""A NAT-PMP client (RFC 6886) over trio UDP: the router's external address and TCP mappings.

The bytes are p2pshare.proto.natpmp's. The RFC retries 9 times over 64 s; a router that
does not answer within :data:`TRIES` tries (0.25 + 0.5 + 1 s) is taken not to speak
NAT-PMP, so no request here takes longer than 1.75 s.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Final

import trio

from p2pshare.errors import UserError
from p2pshare.proto.natpmp import (
    FIRST_WAIT,
    PORT,
    ExternalAddress,
    ExternalAddressRequest,
    Mapping,
    MapRequest,
    NatPmpError,
    Request,
    Response,
    decode_response,
    encode_request,
)

TRIES: Final = 3
ROUTES: Final = Path("/proc/net/route")
_RTF_GATEWAY: Final = 0x2


class NatPmpNoAnswerError(NatPmpError):
    """The router did not answer (or refused the UDP packet): it does not speak NAT-PMP."""


def default_gateway(routes: str) -> str | None:
    """The IPv4 gateway of the default route in the text of /proc/net/route, or None."""
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[1] != "00000000":
            continue
        try:
            flags = int(fields[3], 16)
            # The kernel prints the address in host byte order: little-endian here.
            gateway = ipaddress.IPv4Address(int(fields[2], 16).to_bytes(4, "little"))
        except ValueError:
            continue
        if flags & _RTF_GATEWAY and not gateway.is_unspecified:
            return str(gateway)
    return None


def gateway_or_default(configured: str, routes: Path = ROUTES) -> str:
    """``[network] natpmp_gateway``, or the default route's gateway."""
    if configured:
        return configured
    try:
        found = default_gateway(routes.read_text(encoding="ascii", errors="replace"))
    except OSError:
        found = None
    if found is None:
        raise UserError(
            "no default IPv4 gateway to ask for a NAT-PMP port mapping; "
            "set [network] natpmp_gateway to the router's address"
        )
    return found


def _answers(request: Request, response: Response) -> bool:
    if isinstance(request, ExternalAddressRequest):
        return isinstance(response, ExternalAddress)
    return (
        isinstance(response, Mapping)
        and response.protocol == request.protocol
        and response.internal_port == request.internal_port
    )


async def ask(
    gateway: str,
    request: Request,
    *,
    port: int = PORT,
    tries: int = TRIES,
    first_wait: float = FIRST_WAIT,
) -> Response:
    """Send ``request`` to ``gateway`` and return its answer (RFC 6886 3.1 retries,
    bounded by ``tries``). A result-code error or bytes that are not NAT-PMP raise
    the codec's typed error; silence raises :class:`NatPmpNoAnswerError`."""
    message = encode_request(request)
    wait = first_wait
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # Connected: the kernel drops datagrams from anyone but the gateway (RFC 3.1).
        await sock.connect((gateway, port))
        for _ in range(tries):
            try:
                await sock.send(message)
            except OSError as exc:
                raise NatPmpNoAnswerError(f"cannot send to {gateway}:{port}: {exc}") from exc
            with trio.move_on_after(wait):
                while True:
                    try:
                        data = await sock.recv(64)
                    except ConnectionRefusedError:
                        raise NatPmpNoAnswerError(
                            f"nothing answers NAT-PMP at {gateway}:{port} (port unreachable)"
                        ) from None
                    response = decode_response(data)
                    # Otherwise a late answer to an earlier try: keep listening.
                    if _answers(request, response):
                        return response
            wait *= 2
    raise NatPmpNoAnswerError(f"no NAT-PMP answer from {gateway}:{port} after {tries} tries")


class NatPmpMapper:
    """TCP port mappings on one NAT-PMP router."""

    method = "natpmp"

    def __init__(self, gateway: str, *, port: int = PORT) -> None:
        self.gateway = gateway
        self._port = port

    async def external_ip(self) -> str:
        answer = await ask(self.gateway, ExternalAddressRequest(), port=self._port)
        assert isinstance(answer, ExternalAddress)
        return answer.ip

    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]:
        """Map TCP ``internal`` (asking for ``external``): the port and lifetime granted."""
        answer = await ask(
            self.gateway, MapRequest("tcp", internal, external, lifetime), port=self._port
        )
        assert isinstance(answer, Mapping)
        return answer.external_port, answer.lifetime

    async def unmap_tcp(self, internal: int, _external: int) -> None:
        # RFC 6886 3.4: lifetime 0 and suggested external port 0 delete the mapping.
        await ask(self.gateway, MapRequest("tcp", internal, 0, 0), port=self._port)
