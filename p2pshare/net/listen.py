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
import socket
from typing import TYPE_CHECKING

from p2pshare.errors import ConfigError
from p2pshare.proto.listen import ListenAddr, parse_listen_addr

if TYPE_CHECKING:
    from collections.abc import Sequence


class ListenError(ConfigError):
    """A listen address cannot be used; the message names it and the config key."""

    def __init__(self, address: str, reason: str, key: str = "[network] listen") -> None:
        super().__init__(f"cannot listen on {address} (from {key}): {reason}")
        self.address = address


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
    with socket.socket(_family(addr), socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR lets a restarted daemon reuse its port past TIME_WAIT; it never
        # allows a second listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _family(addr) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((addr.host, addr.port))
        except OSError as exc:
            raise ListenError(addr.text, _reason(exc), key) from None


def _family(addr: ListenAddr) -> socket.AddressFamily:
    return socket.AF_INET6 if addr.ipv6 else socket.AF_INET
