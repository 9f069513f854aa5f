"""Which addresses a node tells others: its listen addresses made true.

:func:`announced` is the one rule.  The host applies it as py-libp2p's address
factory (:func:`addrs_factory`), so ``host.get_addrs()`` -- what identify sends,
what ``p2pshare id`` and the daemon's ready line print -- and the addresses in
tickets and DHT provider records (:func:`announce_addrs`) are the same list.

* ``[network] announce``, if set, is announced as given (a NAT that forwards a
  port is something only the user knows);
* a wildcard listen address (``0.0.0.0``, ``::``) is never announced: it becomes
  one address per interface address of that family, so a peer on another machine
  stores something it can dial;
* loopback addresses are announced only when there is nothing else, i.e. when
  the node listens only on loopback: a peer on another machine that dials
  127.0.0.1 reaches itself, not us, and a peer on this machine can dial the
  interface addresses too;
* addresses py-libp2p confirmed from identify's observed address (several
  peers saw us there) are kept;
* addresses a router maps to this node (``[network] port_mapping``,
  p2pshare.net.mapped) follow, unless AutoNAT refuted them.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import TYPE_CHECKING, Generic, TypeVar

import ifaddr
import multiaddr
import trio

from p2pshare.errors import UserError
from p2pshare.proto.peeraddr import leading_ip_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from libp2p.abc import IHost

    from p2pshare.net.mapped import MappedAddrs

_WILDCARDS = {"/ip4/0.0.0.0": 4, "/ip6/::": 6}
# How long the interface addresses, or the host's, once read are used before they are
# read again (Recent).
RECENT_MAX_AGE = 2.0
_T = TypeVar("_T")


def interface_ips() -> list[str]:
    """This machine's interface addresses (IPv4 and IPv6), link-local ones left out.

    ifaddr (already installed with py-libp2p's zeroconf) calls getifaddrs(3) through
    ctypes: no subprocess, no parsing of another program's output.
    """
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            # ifaddr gives IPv6 addresses as (address, flowinfo, scope_id).
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                if not ipaddress.ip_address(text).is_link_local:
                    found.append(text)
            except ValueError:
                continue
    return sorted(set(found))


class Recent(Generic[_T]):
    """What ``read()`` returns, read again once ``max_age`` seconds have passed, once
    ``version()`` returns something else, or after :meth:`forget`.

    py-libp2p asks for the host's addresses at every identify and every DHT message it
    sends or answers (a signed peer record each time), and p2pshare at every address a
    dial considers (:func:`is_own`).  Reading the interfaces (getifaddrs(3) through
    ctypes) took about 0.5 ms a call, 5% of a downloader's CPU in a crowd of 30
    (py-spy); ``host.get_addrs()`` as a whole, about 1.4 ms, 4% of a crowd
    downloader's CPU (cProfile; docs/benchmarks.md).  An address that appears (DHCP, a
    new VPN) is still announced within ``max_age``.
    """

    def __init__(
        self,
        read: Callable[[], list[_T]],
        *,
        version: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = RECENT_MAX_AGE,
    ) -> None:
        self._read = read
        self._version = version
        self._clock = clock
        self._max_age = max_age
        self._value: list[_T] = []
        self._read_as: object = None
        self._read_at: float | None = None

    def __call__(self) -> list[_T]:
        now = self._clock()
        version = self._version()
        if (
            self._read_at is None
            or now - self._read_at >= self._max_age
            or version != self._read_as
        ):
            self._value = self._read()
            self._read_at = now
            self._read_as = version
        return list(self._value)

    def forget(self) -> None:
        """The next call reads again."""
        self._read_at = None


def _ip_of(addr: multiaddr.Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return leading_ip_port(addr.to_bytes())[0]


def is_loopback(addr: multiaddr.Multiaddr) -> bool:
    ip = _ip_of(addr)
    return ip is not None and ip.is_loopback


def is_wildcard(addr: multiaddr.Multiaddr) -> bool:
    ip = _ip_of(addr)
    return ip is not None and ip.is_unspecified


def is_own(host: IHost, addr: multiaddr.Multiaddr) -> bool:
    """Whether dialing ``addr`` (an IP address, not a relay circuit) reaches this node:
    one of its listen sockets, or an address it announces.

    A listen address 0.0.0.0 (or ``::``) answers at every interface and loopback
    address of its family.
    """
    ip, port = leading_ip_port(addr.to_bytes())
    if ip is None or port is None or "/p2p-circuit" in str(addr):
        return False
    for own in [*host.get_transport_addrs(), *host.get_addrs()]:
        own_ip, own_port = leading_ip_port(own.to_bytes())
        if own_ip is None or own_port != port or own_ip.version != ip.version:
            continue
        if own_ip == ip:
            return True
        if own_ip.is_unspecified and (ip.is_loopback or str(ip) in interface_ips()):
            return True
    return False


_DNS_FAMILIES = {"dns": socket.AF_UNSPEC, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}


async def resolve(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """``addr`` with its ``/dns``, ``/dns4`` or ``/dns6`` name replaced by each address
    the name resolves to (``/dns`` to both families); any other address as it is.

    py-libp2p 0.8.1 passes a resolved DNS address on unchanged, and its TCP dial then
    fails ("IP address not found in multiaddr").  getaddrinfo(3) runs in a worker
    thread (trio's), so ``/etc/hosts`` names such as ``localhost`` resolve as for any
    other program.  An unspecified address a name resolves to is dropped.
    """
    parts = str(addr).split("/")
    if len(parts) < 3 or parts[1] not in _DNS_FAMILIES:
        return [addr]
    name, rest = parts[2], "/".join(parts[3:])
    try:
        infos = await trio.socket.getaddrinfo(
            name, None, family=_DNS_FAMILIES[parts[1]], type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise UserError(f"could not resolve {name}: {exc.strerror or exc}") from None
    resolved: list[multiaddr.Multiaddr] = []
    for family, _, _, _, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError:  # an IPv6 address with a zone (fe80::1%eth0): not dialable as text
            continue
        version = "ip4" if family == socket.AF_INET else "ip6"
        resolved_addr = multiaddr.Multiaddr(f"/{version}/{ip}/{rest}")
        if not ip.is_unspecified and resolved_addr not in resolved:
            resolved.append(resolved_addr)
    if not resolved:
        raise UserError(f"{name} resolves to no address this node can dial ({parts[1]})")
    return resolved


def _expand(addr: multiaddr.Multiaddr, ips: Sequence[str]) -> list[multiaddr.Multiaddr]:
    text = str(addr)
    for prefix, version in _WILDCARDS.items():
        if text.startswith(prefix + "/"):
            rest = text.removeprefix(prefix)
            family = [
                ip
                for ip in ips
                if (parsed := ipaddress.ip_address(ip)).version == version
                and not parsed.is_unspecified
            ]
            return [multiaddr.Multiaddr(f"/ip{version}/{ip}{rest}") for ip in family]
    return [] if is_wildcard(addr) else [addr]


def announced(
    candidates: Iterable[multiaddr.Multiaddr],
    configured: Sequence[str],
    ips: Sequence[str],
) -> list[multiaddr.Multiaddr]:
    """The addresses this node announces.

    ``candidates`` are py-libp2p's (listen addresses, then confirmed observed ones),
    ``configured`` is ``[network] announce``, ``ips`` the interface addresses.
    """
    if configured:
        return [multiaddr.Multiaddr(a) for a in configured]
    result: list[multiaddr.Multiaddr] = []
    for addr in candidates:
        for expanded in _expand(addr, ips):
            if expanded not in result:
                result.append(expanded)
    routable = [a for a in result if not is_loopback(a)]
    return routable or result


def addrs_factory(
    configured: Sequence[str],
    ips: Callable[[], Sequence[str]] | None = None,
    mapped: MappedAddrs | None = None,
) -> Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]]:
    """:func:`announced` as py-libp2p's ``addrs_factory``, then the ``mapped`` addresses
    not refuted; interfaces are read again after a few seconds
    (:class:`Recent`), so an address that appears after start (DHCP, a new
    VPN) is announced."""
    if ips is None:
        ips = Recent(interface_ips)

    def factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        result = announced(candidates, configured, ips())
        for text in mapped.announced() if mapped is not None else ():
            addr = multiaddr.Multiaddr(text)
            if addr not in result:
                result.append(addr)
        return result

    return factory


def without_peer_id(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    text = str(addr)
    return multiaddr.Multiaddr(text.split("/p2p/", maxsplit=1)[0]) if "/p2p/" in text else addr


def announce_addrs(host: IHost) -> list[multiaddr.Multiaddr]:
    """What tickets and DHT records carry: the host's announced addresses, without
    the ``/p2p/<peer ID>`` that ``get_addrs`` appends."""
    return [without_peer_id(a) for a in host.get_addrs()]


def local_addrs(host: IHost, ips: Sequence[str] | None = None) -> list[multiaddr.Multiaddr]:
    """The listen addresses made true but not ``[network] announce``: for peers on the
    same LAN (mDNS), to whom a NAT's public address is usually no use."""
    return announced(host.get_transport_addrs(), (), interface_ips() if ips is None else ips)


def observed_addrs(host: IHost) -> list[str]:
    """Addresses at which peers told us (identify's observed address) they see us.

    py-libp2p 0.8.1 keeps them in the host's ObservedAddrManager, which has no public
    accessor; it announces one itself only once four peer groups agree.  Loopback
    observations are dropped there.  Every address at least one peer reported is
    listed.
    """
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return []
    return sorted({str(a) for a in manager.addrs(min_observers=1)})
