"""Yamux frames go out whole, whatever is cancelled around them (p2pshare.net.muxer)."""

from __future__ import annotations

import struct
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
)

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.muxer import AtomicFrameYamux, is_bare_open

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

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


WINDOW_PROTOCOL = TProtocol("/p2pshare-test/window/1")


def count_window_updates(conn: object) -> list[int]:
    """Patch ``conn``'s frame writer to count the plain WINDOW_UPDATE frames it sends."""
    muxed = conn.muxed_conn  # type: ignore[attr-defined]
    write_frame = muxed._write_frame
    counted = [0]

    async def counting(data: bytes) -> None:
        _version, kind, flags, _stream, _length = struct.unpack(YAMUX_HEADER_FORMAT, data[:12])
        if kind == TYPE_WINDOW_UPDATE and flags == 0:
            counted[0] += 1
        await write_frame(data)

    muxed._write_frame = counting
    return counted


async def counted_stream(
    stack: AsyncExitStack, handler: Callable[[INetStream], Awaitable[None]]
) -> tuple[INetStream, list[int]]:
    """A stream to a host serving ``handler``, and the count of the WINDOW_UPDATE
    frames that host sends."""
    asker = await stack.enter_async_context(
        running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
    )
    server = await stack.enter_async_context(
        running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
    )
    server.set_stream_handler(WINDOW_PROTOCOL, handler)
    await asker.connect(info_from_p2p_addr(server.get_addrs()[0]))
    [conn] = server.get_network().get_connections(asker.get_id())
    updates = count_window_updates(conn)
    return await asker.new_stream(server.get_id(), [WINDOW_PROTOCOL]), updates


async def test_small_reads_send_no_window_update_until_half_the_window_is_read() -> None:
    """py-libp2p credited the sender after every small read: one more encrypted frame
    and send per DHT request, chunk list or multistream line."""
    messages, size = 1000, 100

    async def read_small(stream: INetStream) -> None:
        for _ in range(messages):
            assert len(await stream.read(size)) == size
        await stream.write(b"done")
        await stream.close()

    with trio.fail_after(10):
        async with AsyncExitStack() as stack:
            stream, updates = await counted_stream(stack, read_small)
            for _ in range(messages):
                await stream.write(b"x" * size)
            assert await stream.read(4) == b"done"
    # 100 kB read of a 256 KiB window: nothing to credit yet.
    assert updates[0] == 0


async def test_a_bulk_write_read_in_small_pieces_is_never_left_waiting_for_credit() -> None:
    total, piece = 4 << 20, 1000

    async def read_all(stream: INetStream) -> None:
        got = 0
        while got < total:
            got += len(await stream.read(piece))
        await stream.write(got.to_bytes(8, "big"))
        await stream.close()

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            stream, updates = await counted_stream(stack, read_all)
            for _ in range(total // (64 << 10)):
                await stream.write(b"y" * (64 << 10))
            assert int.from_bytes(await stream.read(8), "big") == total
    # Credit in halves of the window (which may grow), not per read.
    assert 0 < updates[0] <= total // (128 << 10)


def record_messages(conn: object) -> list[list[tuple[int, int, int]]]:
    """Patch ``conn``'s secure session to record each encrypted message it writes, as
    the (type, flags, stream) of the yamux frames in it."""
    session = conn.muxed_conn.secured_conn  # type: ignore[attr-defined]
    write = session.write
    messages: list[list[tuple[int, int, int]]] = []

    async def recording(data: bytes) -> None:
        frames, at = [], 0
        while at < len(data):
            _version, kind, flags, stream, length = struct.unpack(
                YAMUX_HEADER_FORMAT, data[at : at + 12]
            )
            frames.append((kind, flags, stream))
            at += 12 + (length if kind == TYPE_DATA else 0)
        messages.append(frames)
        await write(data)

    session.write = recording
    return messages


class _Session:
    """A secure session that records what the muxer writes."""

    is_initiator = True

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(YAMUX_HEADER_FORMAT, 0, kind, flags, stream, len(payload)) + payload


async def test_a_new_streams_syn_goes_out_in_one_write_with_its_first_data() -> None:
    session = _Session()
    muxer = AtomicFrameYamux(session, ID(b"peer"))
    stream = await muxer.open_stream()
    assert session.writes == []
    await stream.write(b"hello")
    assert session.writes == [
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1) + frame(TYPE_DATA, 0, 1, b"hello")
    ]


async def test_a_held_ack_goes_out_with_the_next_frame_whatever_its_stream() -> None:
    session = _Session()
    muxer = AtomicFrameYamux(session, ID(b"peer"))
    ack = frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 2)
    await muxer._write_frame(ack)
    ping = frame(TYPE_PING, FLAG_SYN, 0)
    await muxer._write_frame(ping)
    assert session.writes == [ack + ping]


async def test_no_syn_or_ack_is_an_encrypted_message_of_its_own() -> None:
    """py-libp2p wrote the SYN and the ACK as messages of their own, and the listener
    its header apart from its echo: 9 encrypted messages for one request and answer on
    a new stream, now 6."""
    async with AsyncExitStack() as stack:
        asker = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        server = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        )
        served = trio.Event()

        async def answer(stream: INetStream) -> None:
            await echo(stream)
            served.set()

        server.set_stream_handler(ECHO, answer)
        with trio.fail_after(10):
            await asker.connect(info_from_p2p_addr(server.get_addrs()[0]))
            [out] = asker.get_network().get_connections(server.get_id())
            [into] = server.get_network().get_connections(asker.get_id())
            sent, answered = record_messages(out), record_messages(into)
            stream = await asker.new_stream(server.get_id(), [ECHO])
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"
            await stream.close()
            await served.wait()
    opens = {(TYPE_WINDOW_UPDATE, FLAG_SYN), (TYPE_WINDOW_UPDATE, FLAG_ACK)}
    assert all(len(m) > 1 for m in sent + answered if {(k, f) for k, f, _ in m} <= opens)
    # The stream's other frames (identify's may share a message with its SYN or ACK):
    # ours the header with the proposal, the request and FIN; theirs the header with
    # the echo, the answer and FIN.
    stream_id = stream.muxed_stream.stream_id  # type: ignore[attr-defined]

    def carrying(messages: list[list[tuple[int, int, int]]]) -> int:
        return sum(any(s == stream_id and (k, f) not in opens for k, f, s in m) for m in messages)

    assert (carrying(sent), carrying(answered)) == (3, 3)


@pytest.mark.parametrize(
    ("flags", "kind", "stream", "delta", "held"),
    [
        (FLAG_SYN, TYPE_WINDOW_UPDATE, 1, 0, True),
        (FLAG_ACK, TYPE_WINDOW_UPDATE, 2, 0, True),
        (FLAG_SYN | FLAG_FIN, TYPE_WINDOW_UPDATE, 1, 0, False),
        (FLAG_SYN, TYPE_WINDOW_UPDATE, 1, 4096, False),
        (FLAG_SYN, TYPE_PING, 0, 7, False),
        (FLAG_SYN, TYPE_DATA, 1, 0, False),
        (0, TYPE_WINDOW_UPDATE, 1, 0, False),
    ],
)
def test_only_a_bare_syn_or_ack_is_held_for_the_next_frame(
    flags: int, kind: int, stream: int, delta: int, *, held: bool
) -> None:
    frame = struct.pack(YAMUX_HEADER_FORMAT, 0, kind, flags, stream, delta)
    assert is_bare_open(frame) is held
    assert not is_bare_open(frame + b"x")
