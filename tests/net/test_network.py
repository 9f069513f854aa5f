"""The Network facade with in-process hosts on 127.0.0.1: plain strings at its edge."""

from __future__ import annotations

import importlib
import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest
import trio

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.datachannel import DataChannelOpenError
from p2pshare.net.network import Network, running_network
from p2pshare.net.peers import PeerAddrs, checked_peer, parse_peer_addr, peer_info
from p2pshare.node.daemon import ReadyInfo

if TYPE_CHECKING:
    from p2pshare.net.streams import ByteStream, LibP2PStream

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/p2pshare-test/echo/1.0.0"
BLAKE3_MULTIHASH = b"\x1e\x20"
TIMEOUT = 10.0
# cli/ installs as p2pshare_cli (pyproject.toml), a name mypy cannot map back to cli/.
ready_text = importlib.import_module("p2pshare_cli.status_text").ready_text


async def start(stack: AsyncExitStack) -> Network:
    return await stack.enter_async_context(
        running_network(NodeKey.generate(), LOOPBACK, dht_requests_per_second=100)
    )


async def _echo(stream: LibP2PStream) -> None:
    await stream.send_all(await stream.receive_some())


async def test_two_networks_dial_and_stream_by_peer_id_and_address_strings() -> None:
    async with AsyncExitStack() as stack:
        ours, theirs = await start(stack), await start(stack)
        theirs.register(ECHO, _echo)
        assert theirs.listen_addrs() == [
            f"{a}/p2p/{theirs.peer_id}" for a in theirs.announce_addrs()
        ]
        target = PeerAddrs(theirs.peer_id, tuple(theirs.announce_addrs()))
        with trio.fail_after(TIMEOUT):
            dialed = await ours.connect(target, TIMEOUT)
        assert dialed in theirs.announce_addrs()
        assert ours.is_connected(theirs.peer_id)
        assert ours.peer_count() == 1
        assert [p.peer_id for p in ours.connected_peers()] == [theirs.peer_id]
        with trio.fail_after(TIMEOUT):
            assert await ours.connect(target, TIMEOUT) is None, "already connected"
            stream = await ours.open_stream(theirs.peer_id, [], ECHO, TIMEOUT)
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            await stream.aclose()
            assert await ours.ping_ms(theirs.peer_id, TIMEOUT) is not None


async def _hold(stream: ByteStream, _peer: str) -> None:
    await stream.receive_some()


@pytest.mark.parametrize("max_connections", [1, 2])
async def test_a_node_takes_as_many_data_channels_as_connections(max_connections: int) -> None:
    """A peer refused a data channel is served over libp2p anyway, at a higher cost."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        ours = await start(stack)
        theirs = await stack.enter_async_context(
            running_network(
                NodeKey.generate(),
                LOOPBACK,
                max_connections=max_connections,
                dht_requests_per_second=100,
            )
        )
        await nursery.start(theirs.data_channel_server("127.0.0.1", 0, _hold).run)
        addrs = theirs.announce_addrs()
        with trio.fail_after(TIMEOUT):
            channels = [
                await ours.open_data_channel(
                    theirs.peer_id, addrs, offer_timeout=TIMEOUT, connect_timeout=TIMEOUT
                )
                for _ in range(max_connections)
            ]
            with pytest.raises(DataChannelOpenError, match="busy"):
                await ours.open_data_channel(
                    theirs.peer_id, addrs, offer_timeout=TIMEOUT, connect_timeout=TIMEOUT
                )
            for channel in channels:
                await channel.aclose()
        nursery.cancel_scope.cancel()


async def test_a_provider_record_carries_the_announced_address_strings() -> None:
    key = BLAKE3_MULTIHASH + os.urandom(32)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        ours, theirs = await start(stack), await start(stack)
        for network in (ours, theirs):
            await nursery.start(network.run_dht)
        with trio.fail_after(TIMEOUT):
            await ours.connect(PeerAddrs(theirs.peer_id, tuple(theirs.announce_addrs())), TIMEOUT)
            assert await ours.add_to_routing_table(theirs.peer_id)
            assert await ours.provide(key, ours.announce_addrs()) == 1
            providers = await theirs.find_providers(key)
        assert [(p.peer_id, list(p.addrs)) for p in providers] == [
            (ours.peer_id, ours.announce_addrs())
        ]
        assert ours.routing_table_size() == 1
        nursery.cancel_scope.cancel()


async def test_the_ready_line_never_says_the_node_listens_on_a_mapped_address() -> None:
    """A router's external address is announced, but no socket of this node is there
    (field test: the ready line printed it under "listening on")."""
    async with AsyncExitStack() as stack:
        network = await start(stack)
        network.mapped.set(["/ip4/203.0.113.7/tcp/40001"])
        mapped = f"/ip4/203.0.113.7/tcp/40001/p2p/{network.peer_id}"
        ready = ReadyInfo.of(network, "/run/p2pshare.sock")
        text = ready_text(ready)
    assert mapped in ready.addrs
    assert (ready.listening, ready.mapped) == ([a for a in ready.addrs if a != mapped], [mapped])
    assert text.splitlines() == [
        f"p2pshare daemon ready: peer {network.peer_id}",
        *(f"  listening on {a}" for a in ready.listening),
        f"  mapped by the router at {mapped}",
        "  control socket /run/p2pshare.sock",
    ]


def test_an_announced_address_of_the_config_is_not_shown_as_listened_on() -> None:
    peer = NodeKey.from_seed(bytes(32)).peer_id
    here, told = f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}", f"/ip4/198.51.100.4/tcp/4001/p2p/{peer}"
    text = ready_text(ReadyInfo(peer, [told], [here], [], "/s"))
    assert text.splitlines()[1:3] == [f"  listening on {here}", f"  announced at {told}"]


def test_a_peer_address_parses_to_its_peer_id_and_address() -> None:
    peer_id = NodeKey.generate().peer_id
    assert parse_peer_addr(f"/ip4/192.0.2.1/tcp/4001/p2p/{peer_id}") == PeerAddrs(
        peer_id, ("/ip4/192.0.2.1/tcp/4001",)
    )
    with pytest.raises(UserError, match="is not a peer address like"):
        parse_peer_addr("/ip4/192.0.2.1/tcp/4001")


def test_a_damaged_remembered_peer_is_none_and_a_sound_one_is_kept() -> None:
    peer_id = NodeKey.generate().peer_id
    assert checked_peer(peer_id, ["/ip4/192.0.2.1/tcp/4001"]) == PeerAddrs(
        peer_id, ("/ip4/192.0.2.1/tcp/4001",)
    )
    assert checked_peer("not-a-peer-id", ["/ip4/192.0.2.1/tcp/4001"]) is None
    assert checked_peer(peer_id, ["/ip4/192.0.2.1/tcp/4001", "/nonsense"]) is None


def test_an_invalid_peer_is_a_user_error_before_any_dial() -> None:
    with pytest.raises(UserError, match="invalid peer ID or address"):
        peer_info(PeerAddrs("not-a-peer-id", ()))
