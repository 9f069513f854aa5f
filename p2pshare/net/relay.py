"""Circuit relay v2 and hole punching (DCUtR): py-libp2p 0.8.1's, wired for p2pshare.

Every node accepts relayed connections and tries to turn each into a direct one with
DCUtR (TCP simultaneous open from the listen port). ``[network] relay_service`` also
makes the node a relay for others, within per-peer limits. ``[network] relays`` are the
relays this node keeps a slot (reservation) on; while it holds one it announces
``<relay address>/p2p-circuit``, through which peers behind other NATs reach it.

What py-libp2p does not do, and this module does (measured in bench/natlab_libp2p.py):

- Its swarm never dials ``/p2p-circuit`` addresses. :func:`dial_peer` (used by
  p2pshare.net.peers.connect) gives a peer's direct addresses a short head start, then
  dials through its relays.
- A reservation lives only as long as the connection to the relay: :meth:`Relays.run`
  renews every lost one, dialing the relay at its configured address (py-libp2p's dialer
  picks one or two addresses from the peerstore; in one lab run that was the relay's
  0.0.0.0 listen address from identify, which reached the node itself).
- Every 2 s its DCUtR renders the addresses of every connection as text to find the
  relayed ones to hole punch: 4.5% of a crowd seeder's CPU in cProfile, with a hundred
  connections and none relayed (docs/benchmarks.md). :class:`RelayedOnlyDCUtR` reads a
  connection's path once, and each pass visits only the relayed peers.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol

import multiaddr
import trio
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from p2pshare.errors import UserError
from p2pshare.net.addrs import is_own, resolve

if TYPE_CHECKING:
    from collections.abc import Sequence

    from libp2p.abc import IHost, INetConn
    from libp2p.peer.id import ID

    from p2pshare.net.streams import HandlerGuard


log = logging.getLogger(__name__)

# py-libp2p's pause between two auto-drive passes of DCUtR.
AUTO_DRIVE_INTERVAL = 2.0
# How long a peer's direct addresses are tried alone before its relays are tried too:
# a dial to an address behind someone's NAT is never answered, it only times out.
DIRECT_HEAD_START = 3.0
# How often lost reservations are renewed; a restarted relay is used again within this.
RESERVE_INTERVAL = 10.0
# A reservation lives an hour on the relay; it is renewed well before.
RENEW_AFTER = 1200.0
CIRCUIT = "/p2p-circuit"
# A peer that does not speak the hop protocol fails the stream's protocol negotiation
# ("protocols not supported").
NOT_A_RELAY = "it does not run the relay service ([network] relay_service = true on it)"

DirectDial = Callable[
    ["IHost", "ID", "Sequence[multiaddr.Multiaddr]"], Awaitable[multiaddr.Multiaddr]
]
_running: weakref.WeakKeyDictionary[Any, Relays] = weakref.WeakKeyDictionary()


def is_circuit(addr: multiaddr.Multiaddr | str) -> bool:
    return CIRCUIT in str(addr)


class RelayedOnlyDCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR, whose auto-drive pass reads each connection's path once."""

    def __init__(self, host: IHost) -> None:
        super().__init__(host)
        self._relayed: weakref.WeakKeyDictionary[INetConn, bool] = weakref.WeakKeyDictionary()

    async def _auto_drive_loop(self) -> None:
        while True:
            await trio.sleep(AUTO_DRIVE_INTERVAL)
            for peer in self.peers_to_drive():
                try:
                    await self.initiate_hole_punch(peer)
                except Exception as exc:  # noqa: BLE001 - as py-libp2p's pass: the next retries
                    log.debug("hole punch to %s: %s", peer, exc)

    def peers_to_drive(self) -> list[ID]:
        """The peers with a relayed connection that a hole punch may still be started
        with (initiate_hole_punch returns at once for one also connected directly)."""
        me = self.host.get_id()
        return [
            peer
            for peer, conns in list(self.host.get_network().connections.items())
            if peer != me
            and peer not in self._in_progress
            and peer not in self._direct_connections
            and self._hole_punch_attempts.get(peer, 0) < MAX_HOLE_PUNCH_ATTEMPTS
            and any(self._is_relayed(c) for c in _each(conns))
        ]

    def _is_relayed(self, conn: INetConn) -> bool:
        known = self._relayed.get(conn)
        if known is None:
            addrs = _transport_addrs(conn)
            if not addrs:  # closing, or none yet: asked again at the next pass
                return False
            known = self._relayed[conn] = any(is_circuit(a) for a in addrs)
        return known


def _each(conns: INetConn | list[INetConn]) -> list[INetConn]:
    """py-libp2p's network maps a peer to a list of connections, or to one."""
    return conns if isinstance(conns, list) else [conns]


def _transport_addrs(conn: INetConn) -> list[multiaddr.Multiaddr] | None:
    """``conn``'s transport addresses; None once it is closing and has none to give."""
    try:
        return conn.get_transport_addresses()
    except Exception:  # noqa: BLE001 - a closing connection has no addresses
        return None


def connection_path(host: IHost, peer: ID) -> str | None:
    """``direct`` if some connection to ``peer`` is direct, ``relayed`` if all go
    through a relay, None if there is none."""
    conns = host.get_network().connections.get(peer)
    if not conns:
        return None
    relayed = True
    for conn in _each(conns):
        addrs = _transport_addrs(conn)
        if addrs is not None and not any(is_circuit(a) for a in addrs):
            relayed = False
    return "relayed" if relayed else "direct"


def relay_circuits(host: IHost, addrs: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """The relay circuits worth trying to reach a peer: those among its ``addrs``, then
    one through each relay this node holds a slot on (a peer behind NAT usually uses the
    same relay). None without a running :class:`Relays`."""
    relays = _running.get(host)
    if relays is None:
        return []
    circuits = [a for a in addrs if is_circuit(a)]
    return circuits + [a for a in relays.own_circuits() if a not in circuits]


async def dial_peer(
    host: IHost,
    peer: ID,
    direct: Sequence[multiaddr.Multiaddr],
    circuits: Sequence[multiaddr.Multiaddr],
    dial_direct: DirectDial,
) -> multiaddr.Multiaddr:
    """Connect to ``peer``: its ``direct`` addresses (``dial_direct``), then ``circuits``.

    The direct addresses get a head start of DIRECT_HEAD_START when there are circuits
    to fall back on; a direct dial that only ran out of its head start gets the rest of
    the caller's time if no relay reaches the peer. Returns the address that worked.
    """
    relays = _running.get(host)
    if not circuits or relays is None:
        return await dial_direct(host, peer, direct)
    error: Exception | None = None
    timed_out = False
    if direct:
        with trio.move_on_after(DIRECT_HEAD_START) as head_start:
            try:
                return await dial_direct(host, peer, direct)
            except Exception as exc:  # noqa: BLE001 - libp2p reports dial failures with many types
                error = exc
        timed_out = head_start.cancelled_caught
    for addr in circuits:
        try:
            await dial_circuit(host, peer, addr, dial_direct)
            return addr
        except Exception as exc:  # noqa: BLE001 - as above; the next relay may work
            error = exc
    if timed_out:
        return await dial_direct(host, peer, direct)
    raise UserError(f"could not connect to {peer} directly or through a relay: {error}")


def split_circuit(addr: multiaddr.Multiaddr) -> tuple[multiaddr.Multiaddr, ID]:
    """The relay's address and peer ID in the circuit ``addr``
    (``RELAY_ADDRESS/p2p/RELAY_ID/p2p-circuit[/p2p/PEER]``)."""
    relay_part = str(addr).split(CIRCUIT, 1)[0]
    info = info_from_p2p_addr(multiaddr.Multiaddr(relay_part))
    return info.addrs[0], info.peer_id


def check_circuit(
    host: IHost, peer: ID, addr: multiaddr.Multiaddr
) -> tuple[multiaddr.Multiaddr, ID]:
    """The relay's address and peer ID in ``addr``; a UserError if the circuit cannot
    reach ``peer`` (it names this node or the peer itself as the relay)."""
    relay_addr, relay = split_circuit(addr)
    if relay == host.get_id():
        raise UserError(f"{addr} names this node itself as the relay")
    if relay == peer:
        raise UserError(f"{addr} names {peer} as its own relay")
    return relay_addr, relay


async def dial_circuit(
    host: IHost, peer: ID, addr: multiaddr.Multiaddr, dial_direct: DirectDial
) -> None:
    """Connect to ``peer`` through the relay circuit ``addr``.

    The relay is dialed first, unless connected, at the address the circuit names
    and with ``dial_direct`` (which resolves DNS names and never dials this node):
    py-libp2p's relay transport would dial it by itself, and cannot dial a name.
    """
    relays = _running.get(host)
    if relays is None:
        raise UserError("this node is not running its relay client yet")
    relay_addr, relay = check_circuit(host, peer, addr)
    if relay not in host.get_connected_peers():
        await dial_direct(host, relay, [relay_addr])
    await relays.dial(addr, peer)


class RelaySettings(Protocol):
    """The ``[network]`` settings relays use (config.NetworkConfig has them)."""

    @property
    def relay_service(self) -> bool: ...
    @property
    def relay_circuit_seconds(self) -> int: ...
    @property
    def relay_circuit_bytes(self) -> int: ...
    @property
    def relay_max_circuits(self) -> int: ...
    @property
    def relay_max_reservations(self) -> int: ...
    @property
    def relays(self) -> tuple[str, ...]: ...
    @property
    def connect_timeout(self) -> float: ...


class Relays:
    """The relay roles of one node: accept relayed connections (always), relay for
    others (``relay_service``) and hold reservations on ``relays``."""

    def __init__(self, host: IHost, guard: HandlerGuard, config: RelaySettings) -> None:
        self._host = host
        self._guard = guard
        self.service = config.relay_service
        self._limits = RelayLimits(
            duration=config.relay_circuit_seconds,
            data=config.relay_circuit_bytes,
            max_circuit_conns=config.relay_max_circuits,
            max_reservations=config.relay_max_reservations,
        )
        self._relays = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in config.relays]
        self._timeout = config.connect_timeout
        self._transport: CircuitV2Transport | None = None
        # relay peer -> (its address we dialed, when the reservation was made)
        self._reserved: dict[ID, tuple[multiaddr.Multiaddr, float]] = {}
        # relay peer -> (state, reason) of the last reservation attempt
        self._states: dict[ID, tuple[str, str | None]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the relay protocols; renew reservations until cancelled.

        Starts once the first round of reservations is done (each within the connect
        timeout), so the first announcement already carries the circuit addresses.
        """
        protocol = CircuitV2Protocol(self._host, limits=self._limits, allow_hop=self.service)
        roles = RelayRole.STOP | RelayRole.CLIENT
        if self.service:
            roles |= RelayRole.HOP
        async with AsyncExitStack() as stack:
            dcutr = RelayedOnlyDCUtR(self._host)
            await stack.enter_async_context(background_trio_service(protocol))
            await stack.enter_async_context(background_trio_service(dcutr))
            await protocol.event_started.wait()
            await dcutr.event_started.wait()
            # py-libp2p registered these on the host directly: the per-peer stream cap
            # and the exception guard are ours to add.
            for served in [HOP_PROTOCOL] if self.service else []:
                self._guard.adopt(str(served))
            self._guard.adopt(str(STOP_PROTOCOL))
            self._guard.adopt(str(DCUTR_PROTOCOL))
            nursery = await stack.enter_async_context(trio.open_nursery())
            self._transport = CircuitV2Transport(
                self._host, protocol, RelayConfig(roles=roles, limits=self._limits)
            )
            _running[self._host] = self
            try:
                await self._reserve_all(nursery)
                task_status.started()
                while True:
                    await trio.sleep(RESERVE_INTERVAL)
                    await self._reserve_all(nursery)
            finally:
                _running.pop(self._host, None)
                nursery.cancel_scope.cancel()

    async def _reserve_all(self, nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as round_:
            for info in self._relays:
                if not self._holds(info.peer_id):
                    round_.start_soon(self._reserve, info, nursery)

    def _holds(self, relay: ID) -> bool:
        reserved = self._reserved.get(relay)
        if reserved is None or time.monotonic() - reserved[1] > RENEW_AFTER:
            return False
        # The relay drops the reservation with the connection it was made on.
        return relay in self._host.get_connected_peers()

    async def _reserve(self, info: PeerInfo, nursery: trio.Nursery) -> None:
        assert self._transport is not None
        self._reserved.pop(info.peer_id, None)
        if info.peer_id == self._host.get_id():
            self._report(info.peer_id, "refused", "that is this node itself")
            return
        # One deadline for the dial, the stream and the reservation together.
        deadline = trio.current_time() + self._timeout
        try:
            with trio.fail_at(deadline):
                if info.peer_id not in self._host.get_connected_peers():
                    await self._dial_relay(info)
        except Exception as exc:  # noqa: BLE001 - an unreachable relay is retried later
            self._report(info.peer_id, "unreachable", _why(exc))
            return
        try:
            with trio.fail_at(deadline):
                stream = await self._host.new_stream(info.peer_id, [HOP_PROTOCOL])
        except trio.TooSlowError:
            self._report(info.peer_id, "unreachable", "it did not open a relay stream in time")
            return
        except Exception as exc:  # noqa: BLE001 - libp2p reports refusals with many types
            log.debug("relay stream to %s failed: %s", info.peer_id, exc)
            if _protocol_refused(exc):
                self._report(info.peer_id, "refused", NOT_A_RELAY)
            else:
                self._report(info.peer_id, "unreachable", _why(exc))
            return
        try:
            with trio.fail_at(deadline):
                ok = await self._transport.reserve(stream, info.peer_id, nursery)
        except Exception as exc:  # noqa: BLE001 - as above; retried later
            self._report(info.peer_id, "refused", _why(exc))
            return
        finally:
            await stream.close()
        if not ok:
            self._report(info.peer_id, "refused", "it refused a reservation (it may be full)")
            return
        self._reserved[info.peer_id] = (info.addrs[0], time.monotonic())
        self._report(info.peer_id, "reserved", None)

    async def _dial_relay(self, info: PeerInfo) -> None:
        """Dial the relay at its configured address, not whatever identify put in the
        peerstore: py-libp2p's dialer picks one or two of those, and a peer's 0.0.0.0
        listen address reaches this node itself. A DNS name is resolved first."""
        network: Any = self._host.get_network()
        error: Exception | None = None
        for target in await resolve(info.addrs[0]):
            if is_own(self._host, target):
                raise UserError(f"{info.addrs[0]} is this node's own address")
            try:
                await network.dial_addr(target, info.peer_id)
            except Exception as exc:  # noqa: BLE001 - the next address may work
                error = exc
                continue
            return
        assert error is not None
        raise error

    def _report(self, relay: ID, state: str, reason: str | None) -> None:
        """Record the outcome of a reservation attempt; log it only when the state
        changed, so a relay that refuses is one line, not one per retry every
        RESERVE_INTERVAL (a reason such as a dial error may differ at each retry)."""
        previous = self._states.get(relay)
        self._states[relay] = (state, reason)
        if previous is not None and previous[0] == state:
            return
        if state == "reserved":
            log.info("reserved a slot on relay %s", relay)
        elif state == "refused":
            log.warning("relay %s refused a reservation: %s; retried quietly", relay, reason)
        else:
            log.info("no reservation on relay %s: %s; retried quietly", relay, reason)

    async def dial(self, addr: multiaddr.Multiaddr, peer: ID) -> None:
        """Connect to ``peer`` through the relay circuit ``addr``."""
        assert self._transport is not None
        target = addr if str(addr).endswith(f"/p2p/{peer}") else addr.encapsulate(f"/p2p/{peer}")
        await self._transport.dial(multiaddr.Multiaddr(target))

    def own_circuits(self) -> list[multiaddr.Multiaddr]:
        """A circuit through each configured relay, to be completed with a peer ID."""
        return [
            multiaddr.Multiaddr(f"{info.addrs[0]}/p2p/{info.peer_id}{CIRCUIT}")
            for info in self._relays
            if info.addrs
        ]

    def circuit_addrs(self) -> list[multiaddr.Multiaddr]:
        """The addresses peers reach this node at through the relays it holds a slot on."""
        return [
            multiaddr.Multiaddr(f"{addr}/p2p/{relay}{CIRCUIT}")
            for relay, (addr, _) in sorted(self._reserved.items(), key=lambda r: str(r[0]))
            if self._holds(relay)
        ]

    def status(self) -> dict[str, Any]:
        circuits = [str(a) for a in self.circuit_addrs()]
        return {
            "relay_service": self.service,
            "uses_relay": bool(circuits),
            "relayed_at": circuits,
            "relays": self.relay_states(),
        }

    def relay_states(self) -> list[dict[str, Any]]:
        """Each configured relay: ``reserved`` (holding a slot now), ``refused`` (it
        answered but gave no slot: not a relay, or full), ``unreachable``, or
        ``pending`` (not tried yet), with the reason."""
        states = []
        for info in self._relays:
            state, reason = self._states.get(info.peer_id, ("pending", None))
            if state == "reserved" and not self._holds(info.peer_id):
                state, reason = "pending", "the reservation was lost; it is renewed shortly"
            states.append(
                {
                    "relay": f"{info.addrs[0]}/p2p/{info.peer_id}",
                    "state": state,
                    "reason": reason,
                }
            )
        return states


def _protocol_refused(exc: BaseException) -> bool:
    """Whether a failed new_stream failed because the peer does not speak the protocol:
    py-libp2p wraps the negotiation's "protocols not supported" in a StreamFailure."""
    cause: BaseException | None = exc
    while cause is not None:
        if "not supported" in str(cause):
            return True
        cause = cause.__cause__
    return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def circuit_addrs(host: IHost) -> list[multiaddr.Multiaddr]:
    """The circuit addresses of the node running ``host`` (none without Relays)."""
    relays = _running.get(host)
    return relays.circuit_addrs() if relays is not None else []
