"""The Network facade with in-process hosts on 127.0.0.1: plain strings at its edge."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest
import trio

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.network import Network, running_network
from p2pshare.net.peers import PeerAddrs, checked_peer, parse_peer_addr, peer_info

if TYPE_CHECKING:
    from p2pshare.net.streams import LibP2PStream

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/p2pshare-test/echo/1.0.0"
BLAKE3_MULTIHASH = b"\x1e\x20"
TIMEOUT = 10.0


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
