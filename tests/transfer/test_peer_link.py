"""PeerLink, the downloader's end of a transfer stream, over trio's in-memory streams."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from p2pshare.proto.cid import ContentId
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
