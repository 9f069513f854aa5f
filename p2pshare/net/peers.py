"""Dialing peers, listing connected ones and measuring their round-trip time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from p2pshare.errors import UserError
from p2pshare.net.streams import LibP2PStream

if TYPE_CHECKING:
    from collections.abc import Sequence

    from libp2p.abc import IHost

# The peerstore keeps dialed addresses for this long (seconds); the daemon saves
# them in the catalog too, so they outlive a restart.
ADDR_TTL = 24 * 3600


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


async def connect(host: IHost, info: PeerInfo, timeout: float) -> None:
    """Dial ``info``; a failure is a UserError naming the peer."""
    if info.peer_id == host.get_id():
        raise UserError("that address is this node itself")
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
    except trio.TooSlowError:
        raise UserError(f"could not reach {info.peer_id} within {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - libp2p reports dial failures with many types
        raise UserError(f"could not connect to {info.peer_id}: {exc}") from None


def connected_peers(host: IHost) -> list[PeerAddrs]:
    peerstore = host.get_peerstore()
    result = []
    for peer in host.get_connected_peers():
        addrs = (
            tuple(sorted(str(a) for a in peerstore.addrs(peer))) if peerstore.has_peer(peer) else ()
        )
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
    if peer not in host.get_connected_peers():
        if maddrs:
            host.get_peerstore().add_addrs(peer, maddrs, ADDR_TTL)
        known = maddrs or _known_addrs(host, peer)
        await connect(host, PeerInfo(peer, known), timeout)
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
