"""In-process libp2p hosts on 127.0.0.1: guarded handlers and the security floor."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import multiaddr
import pytest
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from p2pshare.errors import RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.streams import HandlerGuard, HandlerLimits, LibP2PStream, StreamBrokenError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from libp2p.abc import IHost

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def node() -> AsyncIterator[IHost]:
    async with running_host(NodeKey.generate(), LOOPBACK) as host:
        yield host


async def dial(client: IHost, server: IHost) -> None:
    with trio.fail_after(10):
        await client.connect(info_from_p2p_addr(server.get_addrs()[0]))


async def echo(stream: LibP2PStream) -> None:
    data = await stream.receive_some()
    await stream.send_all(data)


async def boom(stream: LibP2PStream) -> None:
    await stream.receive_some()
    raise RuntimeError("a bug in a handler")


async def liar(stream: LibP2PStream) -> None:
    raise RemoteProtocolError("peer sent nonsense")


async def call(client: IHost, server: IHost, protocol: str, payload: bytes) -> bytes | None:
    """The reply to ``payload``; None when the stream was refused, reset or closed empty."""
    with trio.fail_after(10):
        try:
            raw = await client.new_stream(server.get_id(), [TProtocol(protocol)])
        except Exception:  # noqa: BLE001 - any refusal to open counts as "no answer"
            return None
        stream = LibP2PStream(raw)
        try:
            await stream.send_all(payload)
            return await stream.receive_some() or None
        except StreamBrokenError:
            return None
        finally:
            await stream.reset()


async def test_a_failing_handler_resets_its_stream_and_the_host_keeps_serving() -> None:
    async with node() as server, node() as client:
        guard = HandlerGuard(server, HandlerLimits(streams_per_peer=4, handler_timeout=5))
        guard.register("/t/echo/1", echo)
        guard.register("/t/boom/1", boom)
        guard.register("/t/liar/1", liar)
        await dial(client, server)
        for protocol in ("/t/boom/1", "/t/liar/1"):
            assert await call(client, server, protocol, b"x") is None
        assert await call(client, server, "/t/echo/1", b"still here") == b"still here"


async def drain(stream: LibP2PStream) -> None:
    while await stream.receive_some():
        pass


async def test_handler_timeout_and_per_peer_cap() -> None:
    started = trio.Event()

    async def hold(stream: LibP2PStream) -> None:
        started.set()
        await trio.sleep_forever()

    async with node() as server, node() as client:
        guard = HandlerGuard(server, HandlerLimits(streams_per_peer=1, handler_timeout=1.0))
        guard.register("/t/hold/1", hold)
        guard.register("/t/echo/1", echo)
        await dial(client, server)
        first = LibP2PStream(await client.new_stream(server.get_id(), [TProtocol("/t/hold/1")]))
        await first.send_all(b"hold")
        with trio.fail_after(10):
            await started.wait()
        assert guard.active_streams(client.get_id().to_base58()) == 1
        assert await call(client, server, "/t/echo/1", b"over the cap") is None
        # The held handler times out and its stream is reset by the server.
        with trio.fail_after(10), pytest.raises(StreamBrokenError):
            await drain(first)
        assert guard.active_streams(client.get_id().to_base58()) == 0
        assert await call(client, server, "/t/echo/1", b"free again") == b"free again"


async def test_a_plaintext_only_dialer_is_refused() -> None:
    async with node() as server:
        key_pair = create_new_key_pair()
        plaintext = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
            muxer_opt=create_yamux_muxer_option(),
        )
        async with plaintext.run([multiaddr.Multiaddr(LOOPBACK[0])]):
            with pytest.raises(Exception, match="no addresses established a successful connection"):
                with trio.fail_after(15):
                    await plaintext.connect(info_from_p2p_addr(server.get_addrs()[0]))
            assert server.get_connected_peers() == []


async def test_a_cancelled_write_ends_only_itself_and_the_connection_lives_on() -> None:
    """A write cancelled at any point must not kill the connection (field test #10).

    py-libp2p advances the Noise nonce before the frame reaches the socket; a write
    cancelled in between left the ends' nonces apart, and every later stream to that
    peer failed with "No valid connections available for peer".
    """
    async with node() as server, node() as client:
        guard = HandlerGuard(server, HandlerLimits(streams_per_peer=64, handler_timeout=30))
        guard.register("/t/echo/1", echo)
        guard.register("/t/drain/1", drain)
        await dial(client, server)
        for checkpoints in range(40):
            with trio.fail_after(10):
                raw = await client.new_stream(server.get_id(), [TProtocol("/t/drain/1")])
            stream = LibP2PStream(raw)
            with trio.CancelScope() as writing:
                async with trio.open_nursery() as nursery:

                    async def write_forever(stream: LibP2PStream = stream) -> None:
                        while True:
                            await stream.send_all(b"x" * 100)

                    async def cancel_after(count: int, scope: trio.CancelScope = writing) -> None:
                        for _ in range(count):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()

                    nursery.start_soon(write_forever)
                    nursery.start_soon(cancel_after, checkpoints)
            await stream.reset()
            reply = await call(client, server, "/t/echo/1", b"still connected")
            assert reply == b"still connected", f"cancelled after {checkpoints} checkpoints"


async def test_a_libp2p_handler_adopted_by_the_guard_cannot_end_the_connection() -> None:
    """py-libp2p's relay, DCUtR and AutoNAT handlers are registered on the host itself;
    an exception escaping one ended the whole connection to that peer."""

    async def raw_boom(raw: Any) -> None:
        await raw.read(1)
        raise RuntimeError("a bug in a libp2p handler")

    async with node() as server, node() as client:
        guard = HandlerGuard(server, HandlerLimits(streams_per_peer=4, handler_timeout=5))
        guard.register("/t/echo/1", echo)
        server.set_stream_handler(TProtocol("/t/raw-boom/1"), raw_boom)
        guard.adopt("/t/raw-boom/1")
        await dial(client, server)
        assert await call(client, server, "/t/raw-boom/1", b"x") is None
        assert server.get_id() in client.get_connected_peers()
        assert await call(client, server, "/t/echo/1", b"still here") == b"still here"


async def test_a_libp2p_handler_adopted_by_the_guard_is_under_the_per_peer_cap() -> None:
    started = trio.Event()

    async def raw_hold(raw: Any) -> None:
        started.set()
        await trio.sleep_forever()

    async with node() as server, node() as client:
        guard = HandlerGuard(server, HandlerLimits(streams_per_peer=1, handler_timeout=5))
        server.set_stream_handler(TProtocol("/t/raw-hold/1"), raw_hold)
        guard.adopt("/t/raw-hold/1")
        await dial(client, server)
        first = LibP2PStream(await client.new_stream(server.get_id(), [TProtocol("/t/raw-hold/1")]))
        await first.send_all(b"hold")
        with trio.fail_after(10):
            await started.wait()
        assert guard.active_streams(client.get_id().to_base58()) == 1
        assert await call(client, server, "/t/raw-hold/1", b"over the cap") is None
        await first.reset()
