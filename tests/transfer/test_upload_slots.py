"""The daemon's upload slots: few buffers, lent in turn, never held by a slow downloader."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pshare.identity import NodeKey
from p2pshare.net.encrypted_stream import EncryptedStream
from p2pshare.net.streams import SendsBehind
from p2pshare.proto.transfer import MAX_CHUNKS_PER_REQUEST, ChunkData, Hello, Role
from p2pshare.transfer.upload_slots import KEEP_UP_TO, UploadSlots
from p2pshare.transfer.uploader import serve_transfer
from tests.net.test_datachannel import channel
from tests.transfer.test_uploader import CHUNK, Client, MemorySource, make_pattern_share

if TYPE_CHECKING:
    from tests.transfer.test_uploader import PatternShare

SHARE = make_pattern_share([("big.bin", 2000 * CHUNK)], NodeKey.generate())


def _source() -> MemorySource:
    source = MemorySource()
    source.add(SHARE)
    return source


def _pair(*, server_sndbuf: int | None = None) -> tuple[EncryptedStream, EncryptedStream]:
    """Data-channel ends over a socket pair (client, server); ``server_sndbuf`` makes the
    server's kernel buffer small, so most of every chunk is left for ``flush``."""
    a, b = trio.socket.socketpair()
    if server_sndbuf is not None:
        b.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, server_sndbuf)
    return (
        EncryptedStream(trio.SocketStream(a), channel(Role.CLIENT), peer_id="server"),
        EncryptedStream(trio.SocketStream(b), channel(Role.SERVER), peer_id="client"),
    )


async def _fetch(client: Client, share: PatternShare, first: int, count: int) -> list[int]:
    request = client.chunks(share, first, count)
    await client.send(request)
    results = await client.finish(request.req_id)
    got = [r.message for r in results[request.req_id] if isinstance(r.message, ChunkData)]
    assert all(bytes(c.payload) == share.chunk(c.chunk_index) for c in got)
    return [c.chunk_index for c in got]


@pytest.mark.parametrize("count", [1, 3])
async def test_slots_are_lent_in_arrival_order_and_never_more_than_their_count(
    count: int, autojump_clock: trio.testing.MockClock
) -> None:
    slots = UploadSlots(count)
    holding: list[int] = []
    most = 0
    order: list[int] = []

    async def borrower(n: int) -> None:
        nonlocal most
        async with slots.lend(1000) as buffer:
            assert len(buffer) >= 1000
            order.append(n)
            holding.append(n)
            most = max(most, len(holding))
            await trio.sleep(1)
            holding.remove(n)

    async with trio.open_nursery() as nursery:
        for n in range(7):
            nursery.start_soon(borrower, n)
            await trio.testing.wait_all_tasks_blocked()
    assert most == count
    assert slots.kept_bytes == count * KEEP_UP_TO
    # Each batch that gets slots together is the next ones to have asked.
    for start in range(0, 7, count):
        assert sorted(order[start : start + count]) == list(range(start, min(7, start + count)))


async def test_a_chunk_larger_than_the_kept_buffers_is_lent_and_not_kept() -> None:
    slots = UploadSlots(1)
    async with slots.lend(4 * KEEP_UP_TO) as buffer:
        assert len(buffer) == 4 * KEEP_UP_TO
    assert slots.kept_bytes == 0


async def test_a_downloader_that_stops_reading_holds_no_slot_and_the_others_go_on() -> None:
    # One slot for the whole daemon: if the stalled stream kept it while its peer does
    # not read, the other downloader would never get a chunk.
    slots = UploadSlots(1)
    source = _source()
    stalled_client, stalled_server = _pair()
    client_end, server_end = _pair()
    assert isinstance(server_end, SendsBehind)

    async def serve(stream: EncryptedStream) -> None:
        await serve_transfer(stream, source, slots=slots, peer="test-peer")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, stalled_server)
            nursery.start_soon(serve, server_end)
            stalled = Client(stalled_client)  # type: ignore[arg-type]
            await stalled.send(stalled.chunks(SHARE, 0, MAX_CHUNKS_PER_REQUEST))
            assert isinstance(await stalled.message(), Hello)
            # It asked for 64 chunks and reads no more: its socket fills up, and its
            # writer waits for it to drain.
            stalled_reads = -1
            while stalled_reads != len(source.reads) or not stalled_reads:
                stalled_reads = len(source.reads)
                await trio.sleep(0.1)
            assert stalled_reads < MAX_CHUNKS_PER_REQUEST

            client = Client(client_end)  # type: ignore[arg-type]
            for first in range(0, 192, MAX_CHUNKS_PER_REQUEST):
                expected = list(range(first, first + MAX_CHUNKS_PER_REQUEST))
                assert await _fetch(client, SHARE, first, MAX_CHUNKS_PER_REQUEST) == expected
            assert len(source.reads) == stalled_reads + 192
            nursery.cancel_scope.cancel()
    for stream in (stalled_client, stalled_server, client_end, server_end):
        await stream.reset()


async def test_what_the_socket_could_not_take_at_once_is_sent_before_the_next_wait() -> None:
    # send_behind keeps the end of a chunk the kernel could not take; the writer sends
    # it once it has nothing more to send, or the downloader would wait forever.
    client_end, server_end = _pair(server_sndbuf=4096)
    source = _source()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_transfer(server_end, source, peer="test-peer"))
            client = Client(client_end)  # type: ignore[arg-type]
            for first in (0, 7, 500):
                assert await _fetch(client, SHARE, first, 3) == [first, first + 1, first + 2]
            nursery.cancel_scope.cancel()
    await client_end.reset()
    await server_end.reset()
