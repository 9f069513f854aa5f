"""PeerLink, the downloader's end of a transfer stream, over trio's in-memory streams."""

from __future__ import annotations

import os
from contextlib import aclosing

import pytest
import trio
import trio.testing

from p2pshare.proto.cid import ContentId
from p2pshare.proto.transfer import (
    Cancel,
    ChunkRequest,
    Hello,
    Message,
    Role,
    ServerSession,
    TransferDecoder,
    encode,
)
from p2pshare.transfer.peer import PeerGoneError, PeerLink

CID = ContentId.of(os.urandom(64))


async def test_a_request_after_our_side_closed_fails_as_the_peer_gone() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    link = PeerLink(ours, "peer", max_chunk_size=1 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        # Our sending half gone, the receiving half still read by run().
        await ours.send_stream.aclose()
        with trio.fail_after(5), pytest.raises(PeerGoneError, match="stream closed"):
            await link.manifest(CID)
        nursery.cancel_scope.cancel()
    await theirs.aclose()


async def test_requests_waiting_to_send_when_the_link_is_closed_fail_as_the_peer_gone() -> None:
    """A crowd benchmark lost a download to trio.ClosedResourceError ("internal error"):
    a request sent after its link was dropped by another task."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    link = PeerLink(ours, "peer", max_chunk_size=1 << 20)
    failures: list[BaseException] = []

    async def request() -> None:
        try:
            await link.manifest(CID)
        except Exception as exc:  # noqa: BLE001 - what it raised is the point
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.receive_some)  # takes the HELLO
        await nursery.start(link.run)
        # Nobody reads now: the first request's send blocks, holding the send lock,
        # and the second waits for it.
        nursery.start_soon(request)
        nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        await link.aclose()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [type(exc) for exc in failures] == [PeerGoneError, PeerGoneError]


class ChunkServer:
    """The provider's end, by hand: serves any REQUEST with 4-byte chunks, one per
    ``send_next`` call, and records what the client sent."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.session = ServerSession()
        self.decoder = TransferDecoder(Role.SERVER, max_chunk_size=1 << 20)
        self.received: list[Message] = []
        self.requests: list[ChunkRequest] = []

    async def read(self) -> None:
        while data := await self.stream.receive_some():
            self.decoder.feed(data)
            while (message := self.decoder.next_message()) is not None:
                self.received.append(message)
                answer = self.session.receive(message)
                if isinstance(answer, Hello):
                    await self.stream.send_all(encode(answer))
                elif isinstance(answer, ChunkRequest):
                    self.requests.append(answer)

    async def send_next(self, request: ChunkRequest, index: int) -> None:
        await self.stream.send_all(encode(self.session.data(request.req_id, index, b"data")))


async def test_a_chunk_request_left_early_is_cancelled_and_the_link_goes_on() -> None:
    """An endgame duplicate that lost: its reader leaves after the first chunk, the
    provider is told to stop, and later requests on the same link are answered."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = PeerLink(ours, "peer", max_chunk_size=1 << 20)
    server = ChunkServer(theirs)
    got: list[tuple[int, bytes]] = []

    async def read(run: range, count: int) -> None:
        async with aclosing(link.chunks(CID, run, lambda _i: 4)) as chunks:
            async for index, payload in chunks:
                got.append((index, bytes(payload)))
                if len(got) == count:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.read)
        await nursery.start(link.run)
        nursery.start_soon(read, range(3), 1)
        await trio.testing.wait_all_tasks_blocked()
        [first] = server.requests
        await server.send_next(first, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [(0, b"data")]
        assert Cancel(first.req_id) in server.received
        # What the provider sends next for it is the ERROR that ends it: dropped.
        await server.send_next(first, 1)
        nursery.start_soon(read, range(5, 6), 2)
        await trio.testing.wait_all_tasks_blocked()
        await server.send_next(server.requests[1], 5)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [(0, b"data"), (5, b"data")]
        nursery.cancel_scope.cancel()
