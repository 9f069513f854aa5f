"""Listen addresses: parsed into plain values, and checked to be ours alone before use.

py-libp2p 0.8.1 does not fail when it cannot listen: ``Swarm.listen`` logs at debug
level and returns False, which ``host.run`` ignores, so a daemon would announce
readiness while listening on nothing.  Its TCP listener also sets SO_REUSEPORT, so a
second node of the same user binds the same port without error and the kernel
splits inbound connections between the two.  We keep SO_REUSEPORT (DCUtR hole
punching dials from the listen port and needs it) and instead bind each address
once ourselves, without SO_REUSEPORT, immediately before libp2p does
(p2pshare.net.host): that bind fails while any other socket listens on the port,
with or without SO_REUSEPORT.  Two daemons whose binds fall within the same few
milliseconds can still both pass this check.

This module does not import libp2p: config.py validates listen addresses with it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pshare.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

_FAMILIES = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6}


@dataclass(frozen=True)
class ListenAddr:
    """One TCP listen address: ``host`` is an IP address string, ``port`` 0 picks one."""

    text: str
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


class ListenError(ConfigError):
    """A listen address cannot be used; the message names it and the config key."""

    def __init__(self, address: str, reason: str, key: str = "[network] listen") -> None:
        super().__init__(f"cannot listen on {address} (from {key}): {reason}")
        self.address = address


def parse_listen_addr(text: str) -> ListenAddr:
    """``/ip4/A/tcp/P`` or ``/ip6/A/tcp/P`` as plain values; ValueError says what is wrong."""
    parts = text.split("/")
    if len(parts) < 3 or parts[0] != "":
        raise ValueError("is not a multiaddr like /ip4/0.0.0.0/tcp/4001")
    proto, value = parts[1], parts[2]
    if proto in {"dns", "dns4", "dns6", "dnsaddr"}:
        raise ValueError(
            "names a host by DNS; a listen address needs an IP address (/ip4/... or /ip6/...)"
        )
    if proto not in _FAMILIES:
        raise ValueError("is not a multiaddr like /ip4/0.0.0.0/tcp/4001")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"has {value!r}, which is not an IP address") from None
    if (proto == "ip4") != (ip.version == 4):
        raise ValueError(f"has {value!r}, which is not an /{proto} address")
    rest = parts[3:]
    if not rest or rest[0] != "tcp":
        transport = "/".join(rest) or "none"
        raise ValueError(f"uses transport {transport!r}; p2pshare listens on TCP only (/tcp/PORT)")
    if len(rest) != 2 or not rest[1].isdigit() or int(rest[1]) > 65535:
        raise ValueError("does not end in /tcp/PORT with a port from 0 to 65535")
    return ListenAddr(text, str(ip), int(rest[1]))


def parse_listen_addrs(texts: Sequence[str], key: str = "[network] listen") -> list[ListenAddr]:
    """Every address parsed; an empty list or a bad address is a ListenError."""
    if not texts:
        raise ListenError("nothing", "the list is empty; give at least one address", key)
    parsed = []
    for text in texts:
        try:
            parsed.append(parse_listen_addr(text))
        except ValueError as exc:
            raise ListenError(text, f"the address {exc}", key) from None
    return parsed


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the IP address is not one of this machine's"
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use by another program or another p2pshare daemon"
    if exc.errno == errno.EACCES:
        return "ports below 1024 need privileges"
    return exc.strerror or str(exc)


def check_can_listen(addr: ListenAddr, key: str = "[network] listen") -> None:
    """Bind ``addr`` exclusively and release it; ListenError says why that failed.

    Without SO_REUSEPORT this bind fails while any other socket listens on the port,
    including another node's SO_REUSEPORT listener (see the module docstring).
    """
    with socket.socket(addr.family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR lets a restarted daemon reuse its port past TIME_WAIT; it never
        # allows a second listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if addr.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((addr.host, addr.port))
        except OSError as exc:
            raise ListenError(addr.text, _reason(exc), key) from None
