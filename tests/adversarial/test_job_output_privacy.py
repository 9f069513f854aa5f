"""A job output is its requester's alone: a stranger cannot fetch it, or learn it exists.

A worker keeps each job's stdout (which may hold the requester's private input) as
stored content.  A raw transfer client with another identity asks for it every way the
protocol allows and must get, request for request, the same answers as for content the
node never held.  The requester gets it all, and having sent it all marks it fetched.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.proto.transfer import (
    ChunkRequest,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    Hello,
    ManifestReply,
    Message,
    Role,
    TransferDecoder,
    encode,
)
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

CHUNK = MIN_CHUNK_SIZE
HELLO = encode(Hello(1, Role.CLIENT))
REQUESTER = NodeKey.from_seed(bytes([1]) * 32).peer_id
STRANGER = NodeKey.from_seed(bytes([2]) * 32).peer_id


class Worker:
    """A node keeping one job output of 3 chunks and a bit for REQUESTER."""

    def __init__(self, root: Path) -> None:
        self.catalog = Catalog(root / "worker.sqlite")
        self.store = ShareStore(self.catalog, root / "content", NodeKey.generate(), CHUNK)
        self.data = os.urandom(3 * CHUNK + 5)
        out = root / "job-0123456789abcdef.out"
        out.write_bytes(self.data)
        prepared = self.store.prepare(out, copy=True, name=out.name)
        row = self.store.commit_job_output(prepared, REQUESTER, keep_until=2**40)
        self.cid = ContentId.parse(row.cid)
        self.local = LocalContent(self.store)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    node = Worker(tmp_path)
    yield node
    node.catalog.close()


async def run_inline(fn: Callable[[], Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return fn()


async def ask(worker: Worker, peer: str, requests: list[Message]) -> list[Message]:
    """Everything the worker answers ``peer``'s raw client, HELLO first."""
    client, server = trio.testing.memory_stream_pair()
    messages: list[Message] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await serve_transfer(
                    server, worker.local.for_peer(peer), peer=peer, run_blocking=run_inline
                )
                await server.aclose()

            nursery.start_soon(serve)
            await client.send_all(HELLO + b"".join(encode(r) for r in requests))
            await client.send_eof()
            decoder = TransferDecoder(Role.CLIENT)
            while data := await client.receive_some():
                decoder.feed(data)
                while (message := decoder.next_message()) is not None:
                    messages.append(message)
    return messages


def every_kind_of_request(cid: ContentId) -> list[Message]:
    return [
        GetManifest(1, cid),
        GetHave(2, cid, 0, 4),
        GetPage(3, cid, 0),
        ChunkRequest(4, cid, 0, 1),
        ChunkRequest(5, cid, 1000, 1),  # out of range: must not reveal the size
    ]


def as_seen(messages: list[Message], cid: ContentId, unknown: ContentId) -> list[object]:
    """Replies with the content ID in their text replaced, to compare two CIDs."""
    seen: list[object] = []
    for m in messages:
        if isinstance(m, ErrorReply):
            seen.append((m.req_id, m.code, m.message.replace(str(unknown), str(cid))))
        else:
            seen.append(m)
    return seen


async def test_a_stranger_gets_the_same_answers_as_for_unknown_content(
    worker: Worker, autojump_clock: trio.testing.MockClock
) -> None:
    unknown = ContentId.of(b"never held by anyone")
    for_output = await ask(worker, STRANGER, every_kind_of_request(worker.cid))
    for_unknown = await ask(worker, STRANGER, every_kind_of_request(unknown))
    assert as_seen(for_output, worker.cid, unknown) == as_seen(for_unknown, worker.cid, unknown)
    assert not any(isinstance(m, ManifestReply) for m in for_output)
    assert len([m for m in for_output if isinstance(m, ErrorReply)]) == 5


async def test_even_after_the_requester_fetched_it_a_stranger_learns_nothing(
    worker: Worker, autojump_clock: trio.testing.MockClock
) -> None:
    await ask(worker, REQUESTER, [GetManifest(1, worker.cid), ChunkRequest(2, worker.cid, 0, 4)])
    unknown = ContentId.of(b"never held by anyone")
    for_output = await ask(worker, STRANGER, every_kind_of_request(worker.cid))
    for_unknown = await ask(worker, STRANGER, every_kind_of_request(unknown))
    assert as_seen(for_output, worker.cid, unknown) == as_seen(for_unknown, worker.cid, unknown)


async def test_the_requester_gets_its_output_and_is_marked_as_having_fetched_it(
    worker: Worker, autojump_clock: trio.testing.MockClock
) -> None:
    assert worker.catalog.job_outputs()[str(worker.cid)].keep_until == 2**40
    messages = await ask(
        worker, REQUESTER, [GetManifest(1, worker.cid), ChunkRequest(2, worker.cid, 0, 3)]
    )
    assert isinstance(messages[1], ManifestReply)
    assert worker.catalog.job_outputs()[str(worker.cid)].keep_until == 2**40, "not all yet"
    await ask(worker, REQUESTER, [ChunkRequest(1, worker.cid, 3, 1)])
    assert worker.catalog.job_outputs()[str(worker.cid)].keep_until == 0
