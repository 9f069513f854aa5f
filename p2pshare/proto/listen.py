"""Listen addresses as plain values: ``/ip4/A/tcp/P`` or ``/ip6/A/tcp/P``.

Pure parsing, so that config.py, the CLI and the network layer refuse the same
addresses with the same words; binding them is p2pshare.net.listen's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_FAMILIES = ("ip4", "ip6")


@dataclass(frozen=True)
class ListenAddr:
    """One TCP listen address: ``host`` is an IP address string, ``port`` 0 picks one."""

    text: str
    host: str
    port: int

    @property
    def ipv6(self) -> bool:
        return ":" in self.host


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


def parse_host_port(text: str) -> ListenAddr:
    """``IP:PORT`` or ``[IPv6]:PORT`` (an HTTP listen address); ValueError says what is wrong.

    The port may not be 0: scrapers are pointed at a fixed one.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("is not an address like 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("has an IPv6 address without brackets; write it as [::1]:9464")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"has {host!r}, which is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("does not end in :PORT with a port from 1 to 65535")
    return ListenAddr(text, str(ip), int(port))


def is_loopback(addr: ListenAddr) -> bool:
    """Only this machine can connect to ``addr``."""
    return ipaddress.ip_address(addr.host).is_loopback
