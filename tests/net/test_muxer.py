"""Yamux frames go out whole, whatever is cancelled around them (p2pshare.net.muxer)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host

if TYPE_CHECKING:
    from libp2p.abc import INetStream

ECHO = TProtocol("/p2pshare-test/echo/1")


async def echo(stream: INetStream) -> None:
    await stream.write(await stream.read(5))
    await stream.close()


async def test_a_write_cancelled_after_its_frame_was_encrypted_leaves_the_connection_usable() -> (
    None
):
    """py-libp2p's Yamux encrypts a frame, then writes it: cancelled in between, the
    frame was lost with its Noise nonce spent, and the peer dropped the connection."""
    async with AsyncExitStack() as stack:
        asker = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        server = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        server.set_stream_handler(ECHO, echo)
        with trio.fail_after(10):
            await asker.connect(info_from_p2p_addr(server.get_addrs()[0]))
        [conn] = asker.get_network().get_connections(server.get_id())
        packets = conn.muxed_conn.secured_conn.conn.read_writer  # type: ignore[attr-defined]
        write_packet = packets.write_msg
        encrypted, released = trio.Event(), trio.Event()

        opener: trio.lowlevel.Task | None = None

        async def held_after_encryption(data: bytes) -> None:
            if trio.lowlevel.current_task() is opener:
                encrypted.set()
                await released.wait()
            await write_packet(data)

        packets.write_msg = held_after_encryption
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as opening:

                async def cancel_once_encrypted() -> None:
                    await encrypted.wait()
                    opening.cancel()
                    packets.write_msg = write_packet
                    released.set()

                nursery.start_soon(cancel_once_encrypted)
                opener = trio.lowlevel.current_task()
                await asker.new_stream(server.get_id(), [ECHO])
        assert opening.cancelled_caught
        with trio.fail_after(10):
            stream = await asker.new_stream(server.get_id(), [ECHO])
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"
        assert asker.get_network().get_connections(server.get_id()) == [conn]
