"""Port mapping: ask the home router to forward this node's TCP ports (``[network]
port_mapping``, off by default).

:class:`PortMapping` maps the libp2p port and the data-channel port with NAT-PMP
(p2pshare.net.natpmp) or UPnP IGD (p2pshare.net.upnp) -- ``auto`` tries NAT-PMP first,
which answers in milliseconds or not at all -- renews the mappings at half their
lifetime, and removes them when the daemon stops. The router's external address with
the mapped libp2p port goes into p2pshare.net.mapped, from which the host announces
it and AutoNAT confirms or refutes it; :meth:`PortMapping.offer_port` makes the data
channel offer the router's external port to peers outside this node's networks.

Bounded both ways: :meth:`PortMapping.run` starts at once and maps in the background,
so a router that never answers never delays the daemon's start, and the removal on
stop gets :data:`STOP_BUDGET` seconds at most. With ``port_mapping = "off"`` there is
no PortMapping at all: no packet ever goes to the router; nor for a node that listens
only on loopback (:func:`unmappable`), where ``status`` says why.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from p2pshare.errors import P2PShareError
from p2pshare.net.natpmp import NatPmpMapper, gateway_or_default
from p2pshare.net.reachability import local_networks
from p2pshare.net.upnp import UpnpMapper
from p2pshare.proto.listen import is_loopback

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from p2pshare.net.mapped import MappedAddrs
    from p2pshare.net.streams import LibP2PStream
    from p2pshare.proto.listen import ListenAddr

log = logging.getLogger(__name__)

OFF, MAPPING, MAPPED, FAILED = "off", "mapping", "mapped", "failed"
# Configured, but no router could forward to where this node listens: none is asked.
NOT_ASKED = "not_asked"
LIBP2P, DATA = "libp2p", "data"
# Asked of the router; it may grant less (RFC 6886 recommends 7200 s).
LIFETIME: Final = 3600
# One round (external address, then every port) with one method.
ROUND_TIMEOUT: Final = 10.0
RETRY_AFTER: Final = 60.0
# Renewing at half the lifetime granted, so a mapping never lapses whatever the router
# grants; never sooner than MIN_RENEW (a router granting less is broken), and at least
# every PERMANENT_RENEW, which also re-makes a permanent (lease 0) UPnP mapping in case
# the router rebooted.
MIN_RENEW: Final = 1.0
PERMANENT_RENEW: Final = 1800.0
STOP_BUDGET: Final = 2.0


class Mapper(Protocol):
    """One way of asking a router for TCP mappings (NatPmpMapper, UpnpMapper)."""

    method: str

    async def external_ip(self) -> str: ...
    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]: ...
    async def unmap_tcp(self, internal: int, external: int) -> None: ...


def mappers(method: str, natpmp_gateway: str, upnp_root_url: str) -> list[Mapper]:
    """The mappers ``[network] port_mapping`` names, in the order they are tried."""
    found: list[Mapper] = []
    if method in ("natpmp", "auto"):
        found.append(_LazyNatPmp(natpmp_gateway))
    if method in ("upnp", "auto"):
        found.append(UpnpMapper(upnp_root_url))
    return found


class _LazyNatPmp:
    """A NatPmpMapper whose gateway is looked up at the first request: a missing default
    route fails the mapping (status ``failed``), not the daemon's start."""

    method = "natpmp"

    def __init__(self, configured: str) -> None:
        self._configured = configured
        self._mapper: NatPmpMapper | None = None

    def _get(self) -> NatPmpMapper:
        if self._mapper is None:
            self._mapper = NatPmpMapper(gateway_or_default(self._configured))
        return self._mapper

    async def external_ip(self) -> str:
        return await self._get().external_ip()

    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]:
        return await self._get().map_tcp(internal, external, lifetime)

    async def unmap_tcp(self, internal: int, external: int) -> None:
        await self._get().unmap_tcp(internal, external)


@dataclass(frozen=True)
class Mapped:
    internal: int
    external: int
    lifetime: int


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {ROUND_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


class PortMapping:
    """The router mappings of one node; :meth:`run` is given the ports to map."""

    def __init__(
        self,
        method: str,
        candidates: Sequence[Mapper],
        mapped: MappedAddrs,
        *,
        lifetime: int = LIFETIME,
        is_outside: Callable[[str], bool] | None = None,
    ) -> None:
        self.method = method
        self._candidates = list(candidates)
        self._ports: dict[str, int] = {}
        self._mapped = mapped
        self._lifetime = lifetime
        self._is_outside = is_outside or _outside_local_networks
        self.state = MAPPING
        self.reason = ""
        self.external_ip: str | None = None
        self._active: Mapper | None = None
        self._granted: dict[str, Mapped] = {}

    async def run(
        self,
        ports: dict[str, int],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Map ``ports`` (``{"libp2p": p, "data": q}``; libp2p is required), renew, and
        remove the mappings when cancelled (within STOP_BUDGET). Starts at once."""
        self._ports = dict(ports)
        task_status.started()
        try:
            while True:
                await trio.sleep(await self.map_once())
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_BUDGET):
                await self._remove()

    async def map_once(self) -> float:
        """One round of mapping (or renewing); the seconds until the next."""
        errors = []
        # The method that worked before goes first, so a renewal keeps its router.
        order = sorted(self._candidates, key=lambda m: m is not self._active)
        for mapper in order:
            try:
                with trio.fail_after(ROUND_TIMEOUT):
                    return await self._map_with(mapper)
            except (P2PShareError, OSError, trio.TooSlowError) as exc:
                # With one method the status line already names it.
                named = len(order) > 1
                errors.append(f"{mapper.method}: {_reason(exc)}" if named else _reason(exc))
        self.state, self.reason = FAILED, "; ".join(errors)
        log.warning("port mapping failed: %s; retrying in %g s", self.reason, RETRY_AFTER)
        if self._active is not None:
            await self._remove()
        self._mapped.set([])
        return RETRY_AFTER

    async def _map_with(self, mapper: Mapper) -> float:
        ip = _usable_external_ip(await mapper.external_ip())
        granted: dict[str, Mapped] = {}
        try:
            for name, internal in self._ports.items():
                previous = self._granted.get(name) if mapper is self._active else None
                want = previous.external if previous else internal
                external, lifetime = await mapper.map_tcp(internal, want, self._lifetime)
                granted[name] = Mapped(internal, external, lifetime)
        except BaseException:
            # All or nothing: a half-made set is taken back (bounded: we may be cancelled).
            if mapper is not self._active:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_BUDGET):
                    await self._remove_from(mapper, granted)
            raise
        if self._active is not None and mapper is not self._active:
            await self._remove()
        self._active, self._granted, self.external_ip = mapper, granted, ip
        self.state, self.reason = MAPPED, ""
        libp2p = granted[LIBP2P]
        data = granted.get(DATA)
        self._mapped.set([f"/ip4/{ip}/tcp/{libp2p.external}"], data.external if data else None)
        log.info("port mapping (%s): %s", mapper.method, self.line())
        lifetimes = [m.lifetime for m in granted.values()]
        if min(lifetimes) == 0:
            return PERMANENT_RENEW
        return min(PERMANENT_RENEW, max(MIN_RENEW, min(lifetimes) / 2))

    async def _remove(self) -> None:
        active, granted = self._active, self._granted
        self._active, self._granted = None, {}
        self._mapped.set([])
        if active is not None:
            await self._remove_from(active, granted)

    @staticmethod
    async def _remove_from(mapper: Mapper, granted: dict[str, Mapped]) -> None:
        async def one(mapping: Mapped) -> None:
            try:
                await mapper.unmap_tcp(mapping.internal, mapping.external)
            except (P2PShareError, OSError) as exc:
                log.info("removing the mapping of port %d: %s", mapping.external, exc)

        async with trio.open_nursery() as nursery:
            for mapping in granted.values():
                nursery.start_soon(one, mapping)

    def offer_port(self, stream: LibP2PStream, port: int) -> int:
        """For the data channel: the port a peer on ``stream`` reaches it at (the router's
        external one for a peer outside this node's networks, while mapped)."""
        external = self._mapped.data_port()
        if external is None:
            return port
        try:
            remote = stream.raw.get_remote_address()
        except Exception:  # noqa: BLE001 - transports without an address raise assorted types
            remote = None
        return external if remote and self._is_outside(str(remote[0])) else port

    def line(self) -> str:
        if self.state == MAPPED:
            ports = ", ".join(
                f"{name} {m.internal}->{m.external}" for name, m in self._granted.items()
            )
            return f"{self.method} mapped {self.external_ip} ({ports})"
        if self.state == FAILED:
            return f"{self.method} failed: {self.reason}"
        return f"{self.method}: asking the router"

    def status(self) -> dict[str, Any]:
        return {
            "port_mapping": {
                "method": self.method,
                "via": self._active.method if self._active else None,
                "state": self.state,
                "reason": self.reason or None,
                "external_ip": self.external_ip if self.state == MAPPED else None,
                "ports": {
                    name: {"internal": m.internal, "external": m.external, "lifetime": m.lifetime}
                    for name, m in self._granted.items()
                },
                "addrs": self._mapped.verdicts(),
                "line": self.line(),
            }
        }


def off_status() -> dict[str, Any]:
    """``status`` of a node with ``port_mapping = "off"``."""
    return _idle_status(OFF, OFF, None, "off")


def unmappable(listen: Sequence[ListenAddr]) -> str | None:
    """Why no router could forward a port to a node listening on ``listen``, or None.

    A router forwards to this machine's LAN address: a node listening only on loopback
    is not there, so a mapping would announce an address that reaches nothing."""
    ipv4 = [a for a in listen if not a.ipv6]
    if not ipv4:
        return "this node has no IPv4 listen address, and routers map IPv4 ports only"
    if all(is_loopback(a) for a in ipv4):
        hosts = ", ".join(dict.fromkeys(a.host for a in ipv4))
        return (
            f"this node listens only on loopback ({hosts}), which no router can forward to; "
            "to map a port, listen on a LAN address or 0.0.0.0 ([network] listen)"
        )
    return None


def not_asked_status(method: str, reason: str) -> dict[str, Any]:
    """``status`` of a node whose router is never asked, for ``reason`` (:func:`unmappable`)."""
    return _idle_status(method, NOT_ASKED, reason, f"{method} not asked: {reason}")


def _idle_status(method: str, state: str, reason: str | None, line: str) -> dict[str, Any]:
    return {
        "port_mapping": {
            "method": method,
            "via": None,
            "state": state,
            "reason": reason,
            "external_ip": None,
            "ports": {},
            "addrs": {},
            "line": line,
        }
    }


class UnusableExternalAddressError(P2PShareError):
    """The router named an external address that no peer could reach us at."""


def _usable_external_ip(ip: str) -> str:
    """``ip`` if peers outside could dial it. A router that answers 0.0.0.0 (no uplink
    yet), a loopback, multicast, link-local or reserved address, or a private one (it
    sits behind another router) makes the mapping useless, and announcing that address
    would send peers to the wrong place -- or to their own machine."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise UnusableExternalAddressError(
            f"the router gave {ip!r} as its external address, which is not an IPv4 address"
        ) from None
    if (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address.is_reserved
    ):
        raise UnusableExternalAddressError(
            f"the router gave {ip} as its external address, which no peer can reach"
        )
    if any(address in network for network in _BEHIND_ANOTHER_NAT):
        raise UnusableExternalAddressError(
            f"the router's external address {ip} is not public: it sits behind another "
            "router (double NAT), so a mapping would not be reachable from the internet"
        )
    return str(address)


# RFC 1918 private networks and RFC 6598 carrier-grade NAT space. Documentation ranges
# (TEST-NET) pass: no real router answers them, and the NAT lab's internet is one.
_BEHIND_ANOTHER_NAT: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)


def _outside_local_networks(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not any(address in network for network in local_networks())
