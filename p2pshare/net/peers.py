"""Dialing peers, listing connected ones and measuring their round-trip time."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey

from p2pshare.errors import UserError
from p2pshare.net.addrs import is_own, is_wildcard, resolve, without_peer_id
from p2pshare.net.relay import (
    check_circuit,
    dial_circuit,
    dial_peer,
    is_circuit,
    relay_circuits,
)
from p2pshare.net.streams import LibP2PStream

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from libp2p.abc import IHost, INetConn, INetStream, INetwork, ISecureConn

# The peerstore keeps dialed addresses for this long (seconds); the daemon saves
# them in the catalog too, so they outlive a restart.
ADDR_TTL = 24 * 3600
# Happy eyeballs between the addresses of one peer: the next is dialed this long
# (seconds) after the previous one unless that failed sooner.
DIAL_STAGGER = 0.25
_IP_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


@dataclass(frozen=True)
class PeerAddrs:
    peer_id: str
    addrs: tuple[str, ...]


def parse_peer_multiaddr(text: str) -> PeerInfo:
    """A multiaddr ending in /p2p/<peer ID>; anything else is a sentence for the user."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:  # noqa: BLE001 - multiaddr raises many unrelated types
        raise UserError(
            f"{text!r} is not a peer address like /ip4/192.0.2.1/tcp/4001/p2p/12D3KooW...: {exc}"
        ) from None


def parse_peer_addr(text: str) -> PeerAddrs:
    """:func:`parse_peer_multiaddr` in plain values: the peer ID and the address
    without ``/p2p/<peer ID>``."""
    info = parse_peer_multiaddr(text)
    return PeerAddrs(str(info.peer_id), tuple(str(addr) for addr in info.addrs))


def checked_peer(peer_id: str, addrs: Sequence[str]) -> PeerAddrs | None:
    """``peer_id`` at ``addrs`` if both parse (in their canonical spelling), else None."""
    try:
        return PeerAddrs(
            str(ID.from_base58(peer_id)), tuple(str(multiaddr.Multiaddr(a)) for a in addrs)
        )
    except Exception:  # noqa: BLE001 - multiaddr raises many unrelated types
        return None


def peer_info(peer: PeerAddrs) -> PeerInfo:
    """``peer`` as py-libp2p's PeerInfo; a UserError if its ID or an address is invalid."""
    try:
        return PeerInfo(ID.from_base58(peer.peer_id), [multiaddr.Multiaddr(a) for a in peer.addrs])
    except Exception as exc:  # noqa: BLE001 - multiaddr raises many unrelated types
        raise UserError(f"peer {peer.peer_id!r} has an invalid peer ID or address: {exc}") from None


def check_dialable(addr: multiaddr.Multiaddr) -> None:
    """A UserError, before any dial, for an address this node has no transport for.

    The host speaks TCP only (QUIC is unreliable in py-libp2p 0.8.1, see host.py).
    """
    names = [p.name for p in addr.protocols()]
    if names and names[-1] == "p2p":
        names.pop()
    if len(names) != 2 or names[0] not in _IP_PROTOCOLS or names[1] != "tcp":
        raise UserError(
            f"{addr} is not an address this node can dial: it speaks only TCP, "
            "as in /ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."
        )


def _swarm(host: IHost) -> Swarm:
    network = host.get_network()
    assert isinstance(network, Swarm)
    return network


def has_live_connection(host: IHost, peer: ID) -> bool:
    """Whether a connection to ``peer`` is up and not closing.

    py-libp2p marks a connection closed at once but drops it from the swarm's records
    (and so from ``get_connected_peers``) only after its muxer has closed; a stream
    opened in between fails with "No valid connections available" instead of dialing.
    """
    return any(not conn.is_closed for conn in _swarm(host).get_connections(peer))


def _reason(exc: BaseException) -> str:
    """Why a dial failed, in words: the innermost cause of a py-libp2p dial error
    (its outer messages only repeat the peer ID)."""
    while True:
        if isinstance(exc, PeerIDMismatchesPubkey):
            return "another node answers at that address"
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def replace_addrs(host: IHost, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Make ``addrs`` (best first) the addresses the peerstore knows for ``peer``.

    py-libp2p dials only the first TCP address it knows for a peer and after a
    failure refuses the peer for 60 s (its negative dial cache), so a stale address
    left first would be all it ever tried (field test #7); the cache is lifted too.
    """
    store = host.get_peerstore()
    store.clear_addrs(peer)
    store.add_addrs(peer, list(dict.fromkeys(addrs)), ADDR_TTL)
    _swarm(host).unblock_peer(peer)


async def _targets(host: IHost, addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """The IP addresses to dial for ``addr`` (its DNS name resolved), without those
    that reach this node itself; a UserError if none is left."""
    resolved = await resolve(addr)
    targets = [a for a in resolved if not is_wildcard(a) and not is_own(host, a)]
    if not targets:
        shown = "" if resolved == [addr] else f" ({', '.join(map(str, resolved))})"
        raise UserError(f"{addr}{shown} is this node's own address")
    return targets


async def _dial_addr(host: IHost, peer: ID, addr: multiaddr.Multiaddr) -> None:
    """Dial ``addr``: each address its name resolves to, in order, until one connects."""
    error: Exception | None = None
    for target in await _targets(host, addr):
        try:
            conn = await _swarm(host).dial_addr(target, peer)
        except Exception as exc:  # noqa: BLE001 - libp2p reports dial failures with many types
            error = exc
            continue
        started = getattr(conn, "event_started", None)
        if started is not None:
            await started.wait()
        return
    assert error is not None
    raise error


async def _dial_first(
    host: IHost, peer: ID, addrs: Sequence[multiaddr.Multiaddr]
) -> multiaddr.Multiaddr:
    """Dial ``addrs`` in order, each DIAL_STAGGER after the previous one or at once
    when it failed; the first that connects wins and the others are cancelled."""
    won: list[multiaddr.Multiaddr] = []
    failures: list[str] = []
    async with trio.open_nursery() as nursery:

        async def attempt(addr: multiaddr.Multiaddr, failed: trio.Event) -> None:
            try:
                await _dial_addr(host, peer, addr)
            except Exception as exc:  # noqa: BLE001 - libp2p reports dial failures with many types
                failures.append(f"{addr}: {_reason(exc)}")
                failed.set()
                return
            won.append(addr)
            nursery.cancel_scope.cancel()

        for addr in addrs:
            failed = trio.Event()
            nursery.start_soon(attempt, addr, failed)
            with trio.move_on_after(DIAL_STAGGER):
                await failed.wait()
    if not won:
        raise UserError(f"could not connect to {peer}: {'; '.join(failures)}")
    return won[0]


def _dialable(host: IHost, addrs: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    result = []
    for addr in dict.fromkeys(without_peer_id(a) for a in addrs):
        try:
            check_dialable(addr)
        except UserError:
            continue
        if not is_wildcard(addr) and not is_own(host, addr):
            result.append(addr)
    return result


def _check_not_self(host: IHost, peer: ID) -> None:
    if peer == host.get_id():
        raise UserError(
            f"{peer} is this node's own peer ID; connect to another node "
            "(`p2pshare id` on it prints its addresses)"
        )


async def connect(host: IHost, info: PeerInfo, timeout: float) -> multiaddr.Multiaddr | None:
    """Connect to ``info`` unless connected; return the address that worked (None if
    a connection was there).

    Every address is tried: those in ``info`` first (the newest news: a record, a
    ticket, an mDNS announcement), then the others the peerstore knows.  py-libp2p's
    own dial would try one of them, possibly a stale one.
    """
    _check_not_self(host, info.peer_id)
    if has_live_connection(host, info.peer_id):
        return None
    known = [*info.addrs, *_known_addrs(host, info.peer_id)]
    candidates = _dialable(host, known)
    circuits = relay_circuits(host, known)
    if not candidates and not circuits:
        raise UserError(f"no address to dial {info.peer_id} at is known")
    try:
        with trio.fail_after(timeout):
            addr = await dial_peer(host, info.peer_id, candidates, circuits, _dial_first)
    except trio.TooSlowError:
        raise UserError(f"could not reach {info.peer_id} within {timeout:g} s") from None
    replace_addrs(host, info.peer_id, [addr, *candidates])
    return addr


async def _probe(host: IHost, peer: ID, addr: multiaddr.Multiaddr) -> None:
    """Dial ``addr`` and prove that ``peer`` answers there (Noise authenticates its
    key), then hang up: the connection already up carries on undisturbed."""
    swarm = _swarm(host)
    target = (await _targets(host, addr))[0]
    transport = swarm.transport_manager.transport_for_dialing(target)
    if transport is None:
        raise UserError(f"no transport can dial {addr}")
    raw = await transport.dial(target)
    secured: ISecureConn | None = None
    try:
        secured = await swarm.upgrader.upgrade_security(raw, is_initiator=True, peer_id=peer)
    finally:
        # Shielded: a probe cut short by its deadline must still release the socket.
        with trio.CancelScope(shield=True):
            if secured is None:
                await raw.close()
            else:
                await secured.close()


async def connect_exactly(host: IHost, peer: ID, addr: multiaddr.Multiaddr, timeout: float) -> None:
    """``p2pshare connect ADDR``: dial ``addr`` itself, even when ``peer`` is
    connected through another address; on success it becomes the peer's first
    known address, on failure nothing is changed (a wrong address is not learnt).
    """
    _check_not_self(host, peer)
    if is_circuit(addr):
        await _connect_through_relay(host, peer, addr, timeout)
        return
    check_dialable(addr)
    if is_wildcard(addr):
        raise UserError(f"{addr} is the unspecified address, which names no node")
    connected = has_live_connection(host, peer)
    still_up = "; the existing connection to it is still up" if connected else ""
    with _dial_failures(peer, f"at {addr}", timeout, still_up):
        if connected:
            await _probe(host, peer, addr)
        else:
            _swarm(host).unblock_peer(peer)
            await _dial_addr(host, peer, addr)
    replace_addrs(host, peer, [addr, *_known_addrs(host, peer)] if connected else [addr])


async def _connect_through_relay(
    host: IHost, peer: ID, circuit: multiaddr.Multiaddr, timeout: float
) -> None:
    """``p2pshare connect RELAY/p2p-circuit/p2p/PEER``: reach ``peer`` through that relay.

    A peer already connected (directly or through a relay) is not dialed again: the
    relay would carry a second connection that py-libp2p (one per peer) closes.
    Identify replaces the peer's addresses as soon as it is connected, so the circuit
    is remembered by the caller (the catalog), not in the peer store.
    """
    check_circuit(host, peer, circuit)
    if not has_live_connection(host, peer):
        with _dial_failures(peer, f"through {circuit}", timeout):
            await dial_circuit(host, peer, circuit, _dial_first)


@contextlib.contextmanager
def _dial_failures(peer: ID, where: str, timeout: float, still_up: str = "") -> Iterator[None]:
    """Bound a ``connect`` dial by ``timeout`` and turn its failures into the one
    sentence the CLI prints; ``where`` is ``at ADDR`` or ``through CIRCUIT``."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise UserError(f"could not reach {peer} {where} within {timeout:g} s{still_up}") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - libp2p reports dial failures with many types
        raise UserError(f"could not connect to {peer} {where}: {_reason(exc)}{still_up}") from None


class _OnConnected(INotifee):
    def __init__(self, callback: Callable[[str], None]) -> None:
        self._callback = callback

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = getattr(conn.muxed_conn, "peer_id", None)
        if peer is not None:
            self._callback(str(peer))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def on_connected(host: IHost, callback: Callable[[str], None]) -> None:
    """Call ``callback(peer ID)`` whenever a connection to a peer opens, either way."""
    host.get_network().register_notifee(_OnConnected(callback))


def connected_peers(host: IHost) -> list[PeerAddrs]:
    """Each connected peer with its known addresses, each address once.

    The peerstore holds some addresses twice, with and without ``/p2p/<peer ID>``
    (identify adds one form, a dial or ticket the other).
    """
    peerstore = host.get_peerstore()
    result = []
    for peer in host.get_connected_peers():
        known = peerstore.addrs(peer) if peerstore.has_peer(peer) else []
        addrs = tuple(sorted({str(without_peer_id(a)) for a in known}))
        result.append(PeerAddrs(str(peer), addrs))
    return sorted(result, key=lambda p: p.peer_id)


async def ping_ms(host: IHost, peer_id: str, timeout: float) -> float | None:
    """Round-trip time of one libp2p ping in milliseconds, or None if it failed."""
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(PING_PROTOCOL)])
            try:
                start = time.perf_counter()
                await perform_ping_roundtrip(stream)
                return (time.perf_counter() - start) * 1000
            finally:
                await stream.close()
    except Exception:  # noqa: BLE001 - an unreachable peer simply has no latency figure
        return None


async def open_stream(
    host: IHost, peer_id: str, addrs: Sequence[str], protocol: str, timeout: float
) -> LibP2PStream:
    """A new stream for ``protocol`` to ``peer_id``, dialing ``addrs`` first if needed."""
    try:
        peer = ID.from_base58(peer_id)
        maddrs = [multiaddr.Multiaddr(a) for a in addrs]
    except Exception as exc:  # noqa: BLE001 - peer IDs and addresses come from others
        raise UserError(f"provider {peer_id!r} has an invalid peer ID or address: {exc}") from None
    await connect(host, PeerInfo(peer, maddrs), timeout)
    try:
        with trio.fail_after(timeout):
            raw = await host.new_stream(peer, [TProtocol(protocol)])
    except trio.TooSlowError:
        raise UserError(f"{peer_id} did not open a {protocol} stream in time") from None
    except Exception as exc:  # noqa: BLE001 - libp2p reports refusals with many types
        raise UserError(f"{peer_id} refused a {protocol} stream: {exc}") from None
    return LibP2PStream(raw)


def _known_addrs(host: IHost, peer: ID) -> list[multiaddr.Multiaddr]:
    try:
        return list(host.get_peerstore().addrs(peer))
    except Exception:  # noqa: BLE001 - unknown or expired peer: nothing to dial
        return []
