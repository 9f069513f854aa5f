"""Circuit relay v2 through p2pshare.net.relay: three hosts on 127.0.0.1.

The relay runs Relays with relay_service on; A holds a slot on it; B reaches A only
through it (the NAT behaviour itself is shown by bench/natlab.py in namespaces).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS

from p2pshare.config import NetworkConfig
from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.addrs import announce_addrs
from p2pshare.net.dht import Dht
from p2pshare.net.host import running_host
from p2pshare.net.peers import connect, connect_exactly
from p2pshare.net.relay import (
    AUTO_DRIVE_INTERVAL,
    NOT_A_RELAY,
    RelayedOnlyDCUtR,
    Relays,
    circuit_addrs,
    connection_path,
)
from p2pshare.net.streams import HandlerGuard, HandlerLimits

if TYPE_CHECKING:
    from libp2p.abc import IHost

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
COUNT = TProtocol("/test/count/1")


async def _count(stream: Any) -> None:
    """Read to EOF, answer with the number of bytes seen."""
    total = 0
    with contextlib.suppress(StreamEOF):
        while data := await stream.read(1 << 16):
            total += len(data)
    await stream.write(str(total).encode())
    await stream.close()


async def _send(host: IHost, peer: Any, size: int) -> bytes:
    stream = await host.new_stream(peer, [COUNT])
    block = b"x" * 65536
    for _ in range(size // len(block)):
        await stream.write(block)
    await stream.close()
    return bytes(await stream.read(100))


async def _host(stack: AsyncExitStack) -> IHost:
    host = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
    host.set_stream_handler(COUNT, _count)
    return host


async def _relays(
    nursery: trio.Nursery, host: IHost, limits: HandlerLimits | None = None, **config: Any
) -> Relays:
    settings = dataclasses.replace(NetworkConfig(), connect_timeout=5, **config)
    relays = Relays(host, HandlerGuard(host, limits or HandlerLimits()), settings)
    await nursery.start(relays.run)
    return relays


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _three(stack: AsyncExitStack) -> tuple[IHost, IHost, IHost]:
    return await _host(stack), await _host(stack), await _host(stack)


async def _start(nursery: trio.Nursery, hosts: tuple[IHost, ...], **relay_config: Any) -> Relays:
    """The first host relays; the others reserve a slot on it. The second's Relays."""
    relay, a, b = hosts
    await _relays(nursery, relay, relay_service=True, **relay_config)
    relay_addr = (str(relay.get_addrs()[0]),)
    a_relays = await _relays(nursery, a, relays=relay_addr)
    await _relays(nursery, b, relays=relay_addr)
    return a_relays


async def test_a_peer_is_reached_through_its_relay_when_its_direct_address_fails() -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay, a, b = hosts = await _three(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            a_relays = await _start(nursery, hosts)
            circuit = circuit_addrs(a)
            assert [str(c) for c in circuit] == [
                f"{relay.get_transport_addrs()[0]}/p2p/{relay.get_id()}/p2p-circuit"
            ]
            assert a_relays.status()["uses_relay"] is True
            dead = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{_closed_port()}")
            started = trio.current_time()
            await connect(b, PeerInfo(a.get_id(), [dead]), timeout=20)
            assert trio.current_time() - started < 10
            assert connection_path(b, a.get_id()) == "relayed"
            assert await _send(b, a.get_id(), 1 << 20) == str(1 << 20).encode()
            nursery.cancel_scope.cancel()


async def test_a_relayed_connection_is_cut_at_the_relays_byte_limit() -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, a, b = hosts = await _three(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            await _start(nursery, hosts, relay_circuit_bytes=256 << 10)
            await connect(b, PeerInfo(a.get_id(), []), timeout=20)
            try:
                answer: bytes | None = await _send(b, a.get_id(), 4 << 20)
            except Exception:  # noqa: BLE001 - the relay resets the circuit; py-libp2p's types vary
                answer = None
            # Never all four MiB: the relay cut the circuit after 256 KiB.
            assert answer != str(4 << 20).encode()
            nursery.cancel_scope.cancel()


async def test_without_relays_dialing_is_plain_host_connect() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            b = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            await connect(b, PeerInfo(a.get_id(), a.get_transport_addrs()), timeout=20)
            assert connection_path(b, a.get_id()) == "direct"
            assert circuit_addrs(a) == []


async def test_a_dht_provider_is_reached_through_its_relay_by_a_node_with_no_relay() -> None:
    """A announces only an address nobody answers at (its LAN address behind NAT) and a
    circuit through the relay; B uses no relay. B finds A's record on the relay (a DHT
    node too) and reaches A through the circuit the record carries."""
    key = b"\x1e\x20" + os.urandom(32)
    dead = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay = await _host(stack)
            a = await stack.enter_async_context(
                running_host(NodeKey.generate(), LOOPBACK, announce=[dead])
            )
            a.set_stream_handler(COUNT, _count)
            b = await _host(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            dhts = [Dht(h, HandlerGuard(h, HandlerLimits()), 100) for h in (relay, a, b)]
            for dht in dhts:
                await nursery.start(dht.run)
            await _relays(nursery, relay, relay_service=True)
            await _relays(nursery, a, relays=(str(relay.get_addrs()[0]),))
            await _relays(nursery, b)
            await connect(b, PeerInfo(relay.get_id(), relay.get_transport_addrs()), timeout=10)
            announce = announce_addrs(a) + circuit_addrs(a)
            assert await dhts[1].provide(key, announce) >= 1
            [provider] = await dhts[2].find_providers(key)
            assert provider.peer_id == str(a.get_id())
            addrs = [multiaddr.Multiaddr(text) for text in provider.addrs]
            await connect(b, PeerInfo(a.get_id(), addrs), timeout=20)
            assert connection_path(b, a.get_id()) == "relayed"
            assert await _send(b, a.get_id(), 1 << 20) == str(1 << 20).encode()
            nursery.cancel_scope.cancel()


async def test_the_relay_protocols_are_under_the_per_peer_stream_cap() -> None:
    """py-libp2p registers the hop, stop and DCUtR handlers on the host itself, outside
    the HandlerGuard; a relay allowing no streams per peer must not grant a slot."""
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay, a = await _host(stack), await _host(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            no_streams = HandlerLimits(streams_per_peer=0)
            await _relays(nursery, relay, no_streams, relay_service=True)
            a_relays = await _relays(nursery, a, relays=(str(relay.get_addrs()[0]),))
            assert circuit_addrs(a) == []
            assert a_relays.status()["uses_relay"] is False
            nursery.cancel_scope.cancel()


async def test_connect_to_a_circuit_address_reaches_the_peer_through_that_relay() -> None:
    """`p2pshare connect RELAY/p2p-circuit/p2p/PEER` was refused ("speaks only TCP");
    the relay's address may be a DNS name, which py-libp2p cannot dial."""
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay, a, b = await _three(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            await _relays(nursery, relay, relay_service=True)
            await _relays(nursery, a, relays=(str(relay.get_addrs()[0]),))
            await _relays(nursery, b)
            port = str(relay.get_transport_addrs()[0]).split("/")[4]
            circuit = multiaddr.Multiaddr(
                f"/dns4/localhost/tcp/{port}/p2p/{relay.get_id()}/p2p-circuit"
            )
            assert relay.get_id() not in b.get_connected_peers()
            await connect_exactly(b, a.get_id(), circuit, timeout=20)
            assert connection_path(b, a.get_id()) == "relayed"
            assert await _send(b, a.get_id(), 1 << 16) == str(1 << 16).encode()
            own = multiaddr.Multiaddr(f"{b.get_transport_addrs()[0]}/p2p/{b.get_id()}/p2p-circuit")
            with pytest.raises(UserError, match="names this node itself as the relay"):
                await connect_exactly(b, relay.get_id(), own, timeout=20)
            nursery.cancel_scope.cancel()


async def test_a_configured_relay_that_is_no_relay_is_logged_once_and_shown_in_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relay without the relay service was logged at every retry (every 10 s)."""
    caplog.set_level(logging.INFO, logger="p2pshare.net.relay")
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay, plain, a = await _three(stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            await _relays(nursery, relay, relay_service=True)
            await _relays(nursery, plain)
            configured = (str(relay.get_addrs()[0]), str(plain.get_addrs()[0]))
            a_relays = await _relays(nursery, a, relays=configured)
            for _ in range(3):
                await a_relays._reserve_all(nursery)
            about_plain = [
                r
                for r in caplog.records
                if r.name == "p2pshare.net.relay" and str(plain.get_id()) in r.getMessage()
            ]
            assert [r.getMessage() for r in about_plain] == [
                f"relay {plain.get_id()} refused a reservation: {NOT_A_RELAY}; retried quietly"
            ]
            assert a_relays.status()["relays"] == [
                {"relay": configured[0], "state": "reserved", "reason": None},
                {"relay": configured[1], "state": "refused", "reason": NOT_A_RELAY},
            ]
            nursery.cancel_scope.cancel()


@dataclasses.dataclass(eq=False)
class FakeConn:
    addrs: list[multiaddr.Multiaddr]
    reads: int = 0

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        self.reads += 1
        return self.addrs


@dataclasses.dataclass
class FakeNetwork:
    connections: dict[str, list[FakeConn]]


@dataclasses.dataclass
class FakeHost:
    network: FakeNetwork

    def get_id(self) -> str:
        return "me"

    def get_network(self) -> FakeNetwork:
        return self.network


def dcutr_over(conns: dict[str, list[FakeConn]]) -> RelayedOnlyDCUtR:
    return RelayedOnlyDCUtR(cast("IHost", FakeHost(FakeNetwork(conns))))


DIRECT = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")
RELAYED = multiaddr.Multiaddr(
    "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWGRUVh3YBVSTqhFJ2zXLhkxUxHhQAVvvcFJAEQoDnCjWr/p2p-circuit"
)


def test_dcutr_drives_only_relayed_peers_and_reads_each_connection_once() -> None:
    """py-libp2p's pass rendered every connection's addresses as text every 2 s: 4.5%
    of a crowd seeder's CPU with a hundred connections and none relayed."""
    conns = {
        "direct": [FakeConn([DIRECT])],
        "relayed": [FakeConn([RELAYED])],
        "both": [FakeConn([DIRECT]), FakeConn([RELAYED])],
        "tried out": [FakeConn([RELAYED])],
        "punched": [FakeConn([RELAYED])],
        "no address yet": [FakeConn([])],
    }
    dcutr = dcutr_over(conns)
    dcutr._hole_punch_attempts["tried out"] = MAX_HOLE_PUNCH_ATTEMPTS  # type: ignore[index]
    dcutr._direct_connections.add("punched")  # type: ignore[arg-type]
    for _ in range(5):
        assert dcutr.peers_to_drive() == ["relayed", "both"]
    assert {peer: [c.reads for c in cs] for peer, cs in conns.items()} == {
        "direct": [1],
        "relayed": [1],
        "both": [1, 1],
        "tried out": [0],
        "punched": [0],
        "no address yet": [5],
    }


async def test_dcutr_auto_drive_punches_each_pass_and_outlives_a_failed_punch(
    autojump_clock: trio.abc.Clock,
) -> None:
    dcutr = dcutr_over({"relayed": [FakeConn([RELAYED])], "direct": [FakeConn([DIRECT])]})
    punched: list[str] = []

    async def punch(peer: str) -> bool:
        punched.append(peer)
        raise OSError("hole punch failed")

    dcutr.initiate_hole_punch = punch  # type: ignore[assignment, method-assign]
    with trio.move_on_after(3 * AUTO_DRIVE_INTERVAL + AUTO_DRIVE_INTERVAL / 2):
        await dcutr._auto_drive_loop()
    assert punched == ["relayed"] * 3
