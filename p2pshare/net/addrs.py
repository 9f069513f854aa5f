"""Which addresses a node tells others: listen addresses made dialable."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import ifaddr
import multiaddr

if TYPE_CHECKING:
    from collections.abc import Sequence

    from libp2p.abc import IHost


def _interface_ipv4() -> list[str]:
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_link_local:
                found.append(ip.ip)
    return sorted(set(found)) or ["127.0.0.1"]


def announce_addrs(host: IHost, configured: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """``configured`` if given, else the listen addresses with 0.0.0.0 expanded.

    A provider record or ticket holding 0.0.0.0 is useless to the peer reading it,
    so an unspecified IPv4 listen address becomes one address per local interface;
    an unspecified IPv6 one (not expanded yet) is left out.
    """
    if configured:
        return [multiaddr.Multiaddr(a) for a in configured]
    result: list[multiaddr.Multiaddr] = []
    for addr in host.get_transport_addrs():
        text = str(addr)
        if text.startswith("/ip6/::/"):
            continue
        if text.startswith("/ip4/0.0.0.0/"):
            rest = text.removeprefix("/ip4/0.0.0.0")
            result += [multiaddr.Multiaddr(f"/ip4/{ip}{rest}") for ip in _interface_ipv4()]
        else:
            result.append(addr)
    return result
