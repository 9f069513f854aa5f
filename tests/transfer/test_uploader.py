"""The uploader shell over in-memory streams: what it answers, in which order, and how it stops.

The client side is the real sans-IO ClientSession and decoder, so every frame the server
sends is checked as a downloader would check it.  Tests that read the mock clock run the
source calls inline (``run_inline``): a worker thread would let the autojump clock skip
ahead while it runs.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio
import trio.testing

from p2pshare.errors import LocalProtocolError, RemoteProtocolError, WouldBlockError
from p2pshare.identity import NodeKey
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, hash_chunk, verify_chunk
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import (
    FileEntry,
    ShareKind,
    build_manifest,
    expected_chunk_hash,
    verify_page,
)
from p2pshare.proto.pages import page_for_chunk
from p2pshare.proto.signed_manifest import decode_signed_manifest, sign_manifest
from p2pshare.proto.transfer import (
    MAX_CHUNKS_PER_REQUEST,
    BadRequestError,
    Cancel,
    ChunkData,
    ChunkRequest,
    ClientRequest,
    ClientSession,
    ErrorCode,
    ErrorReply,
    GetManifest,
    HaveReply,
    Hello,
    ManifestReply,
    Message,
    NotAvailableError,
    PageReply,
    Response,
    Role,
    TransferDecoder,
    TransferError,
    UnknownContentError,
    UnsupportedVersionError,
    encode,
)
from p2pshare.transfer.uploader import (
    ABORT_GRACE,
    DATA_FRAME_OVERHEAD,
    UploadLimiter,
    serve_transfer,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from p2pshare.proto.manifest import Manifest
    from p2pshare.proto.pages import HashPage
    from p2pshare.proto.signed_manifest import SignedManifest
    from p2pshare.transfer.blocking import RunBlocking

    TestStream = trio.StapledStream[Any, Any]

CHUNK = MIN_CHUNK_SIZE


def pattern_chunk(global_index: int, length: int) -> bytes:
    """The bytes of chunk ``global_index`` of every test share."""
    unit = global_index.to_bytes(4, "big")
    return (unit * (length // 4 + 1))[:length]


@dataclass(frozen=True)
class PatternShare:
    """A signed share of pattern chunks and the hash pages its manifest names."""

    signed: SignedManifest
    pages: tuple[bytes, ...]

    @property
    def cid(self) -> ContentId:
        return self.signed.cid

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    def chunk_length(self, global_index: int) -> int:
        return self.manifest.locate_chunk(global_index).length

    def chunk(self, global_index: int) -> bytes:
        return pattern_chunk(global_index, self.chunk_length(global_index))


def make_pattern_share(files: list[tuple[str, int]], key: NodeKey) -> PatternShare:
    """A directory share of files of these sizes (path order), cut in 16 KiB chunks."""
    entries = []
    next_index = 0
    for path, size in sorted(files, key=lambda item: item[0].encode()):
        hashes = []
        for offset in range(0, size, CHUNK):
            hashes.append(hash_chunk(pattern_chunk(next_index, min(CHUNK, size - offset))))
            next_index += 1
        entries.append(FileEntry(path, size, b"".join(hashes)))
    built = build_manifest(
        entries,
        kind=ShareKind.DIRECTORY,
        publisher=key.public_key,
        created=1_700_000_000,
        chunk_size=CHUNK,
    )
    return PatternShare(sign_manifest(built.manifest, key), built.pages)


@dataclass
class MemorySource:
    """A ContentSource over PatternShares; records reads and can hold back or break chunks."""

    shares: dict[ContentId, PatternShare] = field(default_factory=dict)
    missing: set[tuple[ContentId, int]] = field(default_factory=set)
    broken: set[tuple[ContentId, int]] = field(default_factory=set)
    # Chunks "not in the page cache": a read that may not wait raises WouldBlockError.
    uncached: set[tuple[ContentId, int]] = field(default_factory=set)
    reads: list[tuple[ContentId, int]] = field(default_factory=list)
    waited: list[tuple[ContentId, int]] = field(default_factory=list)

    def add(self, share: PatternShare) -> PatternShare:
        self.shares[share.cid] = share
        return share

    def _share(self, cid: ContentId) -> PatternShare:
        share = self.shares.get(cid)
        if share is None:
            raise UnknownContentError(f"this node does not hold {cid}")
        return share

    def signed_manifest(self, cid: ContentId) -> bytes:
        return self._share(cid).signed.data

    def page(self, cid: ContentId, page_index: int) -> bytes:
        pages = self._share(cid).pages
        if not 0 <= page_index < len(pages):
            raise NotAvailableError(f"hash page {page_index} of {cid} is not held here")
        return pages[page_index]

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        total = self._share(cid).manifest.total_chunks
        have = Bitfield(count)
        for offset in range(count):
            index = first_chunk + offset
            if index < total and (cid, index) not in self.missing:
                have.set(offset)
        return have

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        share = self._share(cid)
        if (cid, global_index) in self.uncached and not wait:
            raise WouldBlockError("not in the page cache")
        if wait:
            self.waited.append((cid, global_index))
        self.reads.append((cid, global_index))
        if (cid, global_index) in self.missing:
            raise NotAvailableError(f"chunk {global_index} of {cid} is not downloaded yet")
        if (cid, global_index) in self.broken:
            raise OSError(5, "Input/output error")
        chunk = share.chunk(global_index)
        out[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture(scope="session")
def share_key() -> NodeKey:
    return NodeKey.from_seed(b"uploader tests".ljust(32, b"\0"))


@pytest.fixture(scope="session")
def small_share(share_key: NodeKey) -> PatternShare:
    """Nine chunks in three files (one empty, one ending in a short chunk): inline hashes."""
    return make_pattern_share(
        [("a.bin", 3 * CHUNK + 100), ("b/c.bin", 5 * CHUNK), ("empty", 0)], share_key
    )


@pytest.fixture(scope="session")
def big_share(share_key: NodeKey) -> PatternShare:
    """16,484 chunks, so its hashes fill two hash pages (the second one short)."""
    return make_pattern_share([("big.bin", (16384 + 100) * CHUNK - 1000)], share_key)


@pytest.fixture
def source(small_share: PatternShare, big_share: PatternShare) -> MemorySource:
    content = MemorySource()
    content.add(small_share)
    content.add(big_share)
    return content


# --- the client and server ends ----------------------------------------------------------

T = TypeVar("T")
TIMEOUT = 10
UNKNOWN = ContentId(bytes(32))


async def run_inline(fn: Callable[[], T]) -> T:
    """A RunBlocking for mock-clock tests: the source call runs on the event loop."""
    await trio.lowlevel.checkpoint()
    return fn()


_RUN_INLINE: RunBlocking = run_inline  # checks that it fits serve_transfer's parameter


class Client:
    """A downloader's end of the stream: ClientSession + decoder over a trio stream."""

    def __init__(self, stream: TestStream) -> None:
        self.stream = stream
        self.session = ClientSession()
        self.decoder = TransferDecoder(Role.CLIENT, max_chunk_size=MIN_CHUNK_SIZE)
        self.hello = self.session.hello()
        self.hello_sent = False
        self.hello_seen = False

    async def send(self, *messages: Message) -> None:
        """Send ``messages`` in one write, after the client's HELLO if that is not out yet."""
        if not self.hello_sent:
            messages = (self.hello, *messages)
            self.hello_sent = True
        await self.stream.send_all(b"".join(encode(message) for message in messages))

    def chunks(self, share: PatternShare, first: int, count: int) -> ChunkRequest:
        return self.session.get_chunks(share.cid, first, count, share.chunk_length)

    async def message(self) -> Message:
        """The next raw message from the server (EOFError when the stream ends)."""
        while (message := self.decoder.next_message()) is None:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise EOFError
            self.decoder.feed(data)
        return message

    async def response(self) -> Response:
        """The next response, checked by the session; the server's HELLO is consumed."""
        while True:
            response = self.session.receive(await self.message())
            if response is None:
                self.hello_seen = True
                continue
            return response

    async def finish(self, *req_ids: int) -> dict[int, list[Response]]:
        """Every response until the requests ``req_ids`` are all finished."""
        results: dict[int, list[Response]] = {req_id: [] for req_id in req_ids}
        waiting = set(req_ids)
        while waiting:
            response = await self.response()
            results.setdefault(response.request.req_id, []).append(response)
            if response.finished:
                waiting.discard(response.request.req_id)
        return results


class ServerRun:
    """serve_transfer running in a task, with how it ended."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.returned = False
        self.error: Exception | None = None

    async def run(self, stream: TestStream, source: MemorySource, **kwargs: Any) -> None:
        """Like HandlerGuard: serve, then close the stream however serving ended."""
        try:
            await serve_transfer(stream, source, peer="test-peer", **kwargs)
            self.returned = True
        except Exception as exc:  # noqa: BLE001 -- the tests inspect it
            self.error = exc
        finally:
            await stream.aclose()
            self.done.set()

    async def ended(self) -> None:
        with trio.fail_after(TIMEOUT):
            await self.done.wait()


@asynccontextmanager
async def serving(
    source: MemorySource, *, lockstep: bool = False, timeout: float = TIMEOUT, **kwargs: Any
) -> AsyncIterator[tuple[Client, ServerRun]]:
    """serve_transfer over ``source`` in a task, and the client's end of its stream.

    Everything in the block runs within ``timeout``; the server is stopped when the
    block ends (tests that want its outcome wait for ``server.ended()`` first).
    """
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    server_stream, client_stream = pair()
    server = ServerRun()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: server.run(server_stream, source, **kwargs))
            yield Client(client_stream), server
            nursery.cancel_scope.cancel()


def chunk_bytes(responses: list[Response]) -> list[tuple[int, bytes]]:
    return [
        (r.message.chunk_index, bytes(r.message.payload))
        for r in responses
        if isinstance(r.message, ChunkData)
    ]


def last_error(responses: list[Response]) -> ErrorReply:
    message = responses[-1].message
    assert isinstance(message, ErrorReply), message
    assert responses[-1].finished
    return message


# --- metadata ---------------------------------------------------------------------------


async def test_the_manifest_is_served_and_checks_against_its_content_id(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        request = client.session.get_manifest(small_share.cid)
        await client.send(request)
        (response,) = (await client.finish(request.req_id))[request.req_id]
        assert client.hello_seen
        assert isinstance(response.message, ManifestReply)
        assert response.message.data == small_share.signed.data
        decoded = decode_signed_manifest(response.message.data, small_share.cid)
        assert decoded.manifest == small_share.manifest
        await client.stream.send_eof()
        await server.ended()
    assert server.returned


async def test_hash_pages_are_served_and_verify(
    source: MemorySource, big_share: PatternShare
) -> None:
    assert len(big_share.pages) == 2
    async with serving(source) as (client, _server):
        requests = [client.session.get_page(big_share.cid, index) for index in (1, 0, 2)]
        await client.send(*requests)
        results = await client.finish(*(r.req_id for r in requests))
        for index, request in zip((1, 0), requests, strict=False):
            (response,) = results[request.req_id]
            assert isinstance(response.message, PageReply)
            assert response.message.page == big_share.pages[index]
            verify_page(big_share.manifest, index, response.message.page)
        assert last_error(results[requests[2].req_id]).code == ErrorCode.BAD_REQUEST


async def test_have_reports_exactly_the_chunks_held(
    source: MemorySource, small_share: PatternShare
) -> None:
    source.missing |= {(small_share.cid, 2), (small_share.cid, 5)}
    async with serving(source) as (client, _server):
        request = client.session.get_have(small_share.cid, 1, 8)
        await client.send(request)
        (response,) = (await client.finish(request.req_id))[request.req_id]
        assert isinstance(response.message, HaveReply)
        assert list(response.message.have.iter_set()) == [0, 2, 3, 5, 6, 7]


# --- chunks -----------------------------------------------------------------------------


async def test_a_chunk_request_returns_exactly_its_chunks_in_order(
    source: MemorySource, small_share: PatternShare
) -> None:
    total = small_share.manifest.total_chunks
    async with serving(source) as (client, _server):
        request = client.chunks(small_share, 0, total)
        await client.send(request)
        responses = (await client.finish(request.req_id))[request.req_id]
        chunks = chunk_bytes(responses)
        assert [index for index, _ in chunks] == list(range(total))
        for index, payload in chunks:
            assert payload == small_share.chunk(index)
            verify_chunk(expected_chunk_hash(small_share.manifest, index), payload)
        assert len(chunks[3][1]) == 100  # a.bin ends in a short chunk
        assert responses[-1].finished


async def test_cached_chunks_are_read_at_once_and_the_others_where_they_may_wait(
    source: MemorySource, small_share: PatternShare
) -> None:
    cid = small_share.cid
    source.uncached = {(cid, 2), (cid, 5)}
    async with serving(source) as (client, _server):
        request = client.chunks(small_share, 0, 8)
        await client.send(request)
        chunks = chunk_bytes((await client.finish(request.req_id))[request.req_id])
    assert chunks == [(i, small_share.chunk(i)) for i in range(8)]
    assert source.waited == [(cid, 2), (cid, 5)]


async def test_chunks_across_a_hash_page_boundary_verify_against_their_pages(
    source: MemorySource, big_share: PatternShare
) -> None:
    first = 16384 - 32
    async with serving(source) as (client, _server):
        pages = [client.session.get_page(big_share.cid, index) for index in (0, 1)]
        request = client.chunks(big_share, first, MAX_CHUNKS_PER_REQUEST)
        await client.send(*pages, request)
        results = await client.finish(request.req_id, *(p.req_id for p in pages))
        verified: dict[int, HashPage] = {}
        for index, page_request in enumerate(pages):
            message = results[page_request.req_id][0].message
            assert isinstance(message, PageReply)
            verified[index] = verify_page(big_share.manifest, index, message.page)
        chunks = chunk_bytes(results[request.req_id])
        assert [i for i, _ in chunks] == list(range(first, first + MAX_CHUNKS_PER_REQUEST))
        for index, payload in chunks:
            page = verified[page_for_chunk(index)[0]]
            verify_chunk(expected_chunk_hash(big_share.manifest, index, page), payload)


async def test_the_last_chunk_of_a_share_has_its_short_length(
    source: MemorySource, big_share: PatternShare
) -> None:
    last = big_share.manifest.total_chunks - 1
    async with serving(source) as (client, _server):
        request = client.chunks(big_share, last - 1, 2)
        await client.send(request)
        chunks = chunk_bytes((await client.finish(request.req_id))[request.req_id])
        assert [len(payload) for _, payload in chunks] == [CHUNK, CHUNK - 1000]


async def test_pipelined_requests_are_all_answered_each_in_order(
    source: MemorySource, small_share: PatternShare, big_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        session = client.session
        requests: list[ClientRequest] = [
            session.get_manifest(big_share.cid),
            client.chunks(big_share, 100, 40),
            session.get_have(small_share.cid, 0, 9),
            client.chunks(small_share, 4, 5),
            session.get_page(big_share.cid, 1),
            *(client.chunks(big_share, 1000 + 10 * n, 10) for n in range(11)),
        ]
        assert session.outstanding == 16
        await client.send(*requests)
        results = await client.finish(*(r.req_id for r in requests))
        for request in requests:
            responses = results[request.req_id]
            assert responses[-1].finished
            assert not any(isinstance(r.message, ErrorReply) for r in responses)
            if isinstance(request, ChunkRequest):
                assert [i for i, _ in chunk_bytes(responses)] == list(request.chunks)
        assert session.outstanding == 0
        await client.stream.send_eof()
        await server.ended()
    assert server.returned


# --- refusals ---------------------------------------------------------------------------


async def test_unknown_content_is_refused_and_the_stream_stays_usable(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        session = client.session
        unknown: list[ClientRequest] = [
            session.get_manifest(UNKNOWN),
            session.get_chunks(UNKNOWN, 0, 4, lambda _i: CHUNK),
            session.get_have(UNKNOWN, 0, 4),
            session.get_page(UNKNOWN, 0),
        ]
        known = session.get_manifest(small_share.cid)
        await client.send(*unknown, known)
        results = await client.finish(known.req_id, *(r.req_id for r in unknown))
        for request in unknown:
            error = last_error(results[request.req_id])
            assert error.code == ErrorCode.UNKNOWN_CONTENT
            assert len(results[request.req_id]) == 1
        assert isinstance(results[known.req_id][0].message, ManifestReply)
        await client.stream.send_eof()
        await server.ended()
    assert server.returned


async def test_a_chunk_not_held_ends_the_request_with_not_available(
    source: MemorySource, small_share: PatternShare
) -> None:
    source.missing.add((small_share.cid, 3))
    async with serving(source) as (client, _server):
        request = client.chunks(small_share, 0, 9)
        after = client.chunks(small_share, 4, 2)
        await client.send(request, after)
        results = await client.finish(request.req_id, after.req_id)
        responses = results[request.req_id]
        assert [i for i, _ in chunk_bytes(responses)] == [0, 1, 2]
        assert last_error(responses).code == ErrorCode.NOT_AVAILABLE
        assert [i for i, _ in chunk_bytes(results[after.req_id])] == [4, 5]


async def test_ranges_beyond_the_share_are_bad_requests(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, _server):
        session = client.session
        requests: list[ClientRequest] = [
            session.get_chunks(small_share.cid, 8, 2, lambda _i: CHUNK),
            session.get_have(small_share.cid, 5, 5),
            session.get_page(small_share.cid, 0),  # inline hashes: no pages at all
        ]
        await client.send(*requests)
        results = await client.finish(*(r.req_id for r in requests))
        for request in requests:
            assert last_error(results[request.req_id]).code == ErrorCode.BAD_REQUEST
            assert len(results[request.req_id]) == 1
        assert source.reads == []


async def test_a_failing_source_ends_that_request_with_internal_and_logs_it(
    source: MemorySource, small_share: PatternShare, caplog: pytest.LogCaptureFixture
) -> None:
    source.broken.add((small_share.cid, 1))
    async with serving(source) as (client, _server):
        request = client.chunks(small_share, 0, 3)
        after = client.session.get_manifest(small_share.cid)
        await client.send(request, after)
        results = await client.finish(request.req_id, after.req_id)
        error = last_error(results[request.req_id])
        assert error.code == ErrorCode.INTERNAL
        assert "Input/output" not in error.message  # details stay in our log
        assert isinstance(results[after.req_id][0].message, ManifestReply)
    assert any(
        record.levelno == logging.ERROR and record.exc_info is not None for record in caplog.records
    )


class WrongHaveSource(MemorySource):
    """A source with a bug: its HAVE bitfields are one bit too long."""

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        return super().have(cid, first_chunk, count + 1)


async def test_a_bug_closes_only_its_stream_with_internal_and_raises_plainly(
    small_share: PatternShare,
) -> None:
    source = WrongHaveSource()
    source.add(small_share)
    async with serving(source) as (client, server):
        await client.send(client.session.get_have(small_share.cid, 0, 4))
        with pytest.raises(TransferError) as raised:
            await client.response()
        assert (raised.value.req_id, raised.value.code) == (0, ErrorCode.INTERNAL)
        assert "bit" not in str(raised.value)  # no details for the peer
        await server.ended()
    # The bug itself, not an exception group, for the handler guard to log.
    assert isinstance(server.error, LocalProtocolError)


async def test_requests_beyond_the_servers_limit_are_answered_busy(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source, max_outstanding=2) as (client, _server):
        requests = [client.chunks(small_share, n, 3) for n in range(4)]
        await client.send(*requests)
        results = await client.finish(*(r.req_id for r in requests))
        for request in requests[2:]:
            assert last_error(results[request.req_id]).code == ErrorCode.BUSY
            assert len(results[request.req_id]) == 1
        for request in requests[:2]:
            assert [i for i, _ in chunk_bytes(results[request.req_id])] == list(request.chunks)
        # Once those ended, the server accepts requests again.
        again = client.chunks(small_share, 0, 1)
        await client.send(again)
        assert chunk_bytes((await client.finish(again.req_id))[again.req_id])


# --- cancel -----------------------------------------------------------------------------


async def test_cancel_stops_a_request_being_sent(
    source: MemorySource, big_share: PatternShare
) -> None:
    # Lockstep: the server cannot run ahead of what the client reads; inline
    # source calls make "every task blocked" mean "the server is in send_all".
    async with serving(source, lockstep=True, run_blocking=run_inline) as (client, _server):
        request = client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST)
        await client.send(request)
        first = await client.response()
        assert isinstance(first.message, ChunkData)
        assert first.message.chunk_index == 0
        await trio.testing.wait_all_tasks_blocked()  # chunk 1 is being written
        cancel = client.session.cancel(request.req_id)
        assert cancel is not None
        await client.send(cancel)
        responses = [first, *(await client.finish(request.req_id))[request.req_id]]
        # The frame under way is finished, then the request ends; nothing more is read.
        assert [i for i, _ in chunk_bytes(responses)] == [0, 1]
        assert last_error(responses).code == ErrorCode.CANCELLED
        assert [index for _cid, index in source.reads] == [0, 1]
        # The stream goes on serving.
        after = client.session.get_manifest(big_share.cid)
        await client.send(after)
        message = (await client.finish(after.req_id))[after.req_id][0].message
        assert isinstance(message, ManifestReply)


async def test_cancel_during_a_pause_of_the_limiter_ends_the_request(
    source: MemorySource, big_share: PatternShare, autojump_clock: trio.testing.MockClock
) -> None:
    limiter = UploadLimiter(CHUNK)  # one chunk per second, after a burst of one
    async with serving(source, limiter=limiter, run_blocking=run_inline, timeout=100) as (
        client,
        _server,
    ):
        request = client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST)
        await client.send(request)
        assert isinstance((await client.response()).message, ChunkData)
        await trio.sleep(0.5)  # the server waits for the limiter with chunk 1 in hand
        cancel = client.session.cancel(request.req_id)
        assert cancel is not None
        await client.send(cancel)
        responses = (await client.finish(request.req_id))[request.req_id]
        assert [r.message.code for r in responses if isinstance(r.message, ErrorReply)] == [
            ErrorCode.CANCELLED
        ]
        assert len(chunk_bytes(responses)) == 0


async def test_a_queued_request_cancelled_before_its_turn_is_never_read(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source, lockstep=True) as (client, _server):
        first = client.chunks(small_share, 0, 4)
        queued = client.chunks(small_share, 4, 4)
        cancel = client.session.cancel(queued.req_id)
        assert cancel is not None
        await client.send(first, queued, cancel, Cancel(999))
        results = await client.finish(first.req_id, queued.req_id)
        assert [i for i, _ in chunk_bytes(results[first.req_id])] == [0, 1, 2, 3]
        assert len(results[queued.req_id]) == 1
        assert last_error(results[queued.req_id]).code == ErrorCode.CANCELLED
        assert [index for _cid, index in source.reads] == [0, 1, 2, 3]


async def test_cancel_after_the_last_frame_is_ignored(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        request = client.session.get_manifest(small_share.cid)
        await client.send(request)
        await client.finish(request.req_id)
        await client.send(Cancel(request.req_id))
        await client.stream.send_eof()
        await server.ended()
    assert server.returned


# --- the end of a stream ----------------------------------------------------------------


async def test_client_eof_before_anything_returns_cleanly(source: MemorySource) -> None:
    async with serving(source) as (client, server):
        await client.stream.send_eof()
        await server.ended()
        with pytest.raises(EOFError):
            await client.message()
    assert server.returned


async def test_client_eof_after_pipelined_requests_still_answers_them(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source, lockstep=True) as (client, server):
        requests = [client.chunks(small_share, 0, 9), client.chunks(small_share, 2, 2)]
        await client.send(*requests)
        await client.stream.send_eof()
        results = await client.finish(*(r.req_id for r in requests))
        assert len(chunk_bytes(results[requests[0].req_id])) == 9
        assert len(chunk_bytes(results[requests[1].req_id])) == 2
        await server.ended()
    assert server.returned


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05\x99junk",  # unknown message type
        b"\xff\xff\xff\xff\x01",  # a frame far too large
        b"\x00\x00\x00\x00",  # an empty frame
        b"\x00\x00\x00\x03\x21\x00\x00",  # DATA, which no server accepts
        b"\x00\x00\x00\x03\x01\xc1\xc1",  # a HELLO that is not msgpack
    ],
)
@pytest.mark.parametrize("after_hello", [False, True])
async def test_garbage_gets_a_closing_error_and_ends_serving(
    source: MemorySource, garbage: bytes, after_hello: bool
) -> None:
    async with serving(source) as (client, server):
        if after_hello:
            await client.send()
        await client.stream.send_all(garbage)
        with pytest.raises(BadRequestError) as raised:
            await client.response()
        assert raised.value.req_id == 0
        await server.ended()
        with pytest.raises(EOFError):  # nothing follows the closing ERROR
            await client.message()
    assert isinstance(server.error, RemoteProtocolError)


async def test_garbage_while_a_chunk_is_written_closes_after_that_frame(
    source: MemorySource, big_share: PatternShare
) -> None:
    async with serving(source, lockstep=True, run_blocking=run_inline) as (client, server):
        request = client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST)
        await client.send(request)
        assert isinstance((await client.response()).message, ChunkData)
        await trio.testing.wait_all_tasks_blocked()  # chunk 1 is being written
        await client.stream.send_all(b"\x00\x00\x00\x05\x99junk")
        # The DATA under way arrives whole, then the closing ERROR 0.
        response = await client.response()
        assert isinstance(response.message, ChunkData)
        assert response.message.chunk_index == 1
        with pytest.raises(BadRequestError):
            await client.response()
        await server.ended()
        with pytest.raises(EOFError):
            await client.message()
    assert isinstance(server.error, RemoteProtocolError)


async def test_a_violation_while_the_client_does_not_read_ends_after_a_grace(
    source: MemorySource, big_share: PatternShare, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(source, lockstep=True, run_blocking=run_inline, timeout=100) as (
        client,
        server,
    ):
        await client.send(client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST))
        assert isinstance(await client.message(), Hello)
        await trio.testing.wait_all_tasks_blocked()  # chunk 0 is being written
        start_time = trio.current_time()
        await client.stream.send_all(b"\x00\x00\x00\x05\x99junk")
        await server.done.wait()
        assert trio.current_time() - start_time == pytest.approx(ABORT_GRACE)
    assert isinstance(server.error, RemoteProtocolError)


async def test_a_request_before_hello_is_a_violation(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        await client.stream.send_all(encode(GetManifest(1, small_share.cid)))
        with pytest.raises(BadRequestError):
            await client.response()
        await server.ended()
    assert isinstance(server.error, RemoteProtocolError)
    assert source.reads == []


async def test_another_version_is_refused_with_unsupported_version(source: MemorySource) -> None:
    async with serving(source) as (client, server):
        await client.stream.send_all(encode(Hello(2, Role.CLIENT)))
        message = await client.message()
        assert isinstance(message, ErrorReply)
        assert (message.req_id, message.code) == (0, ErrorCode.UNSUPPORTED_VERSION)
        await server.ended()
    assert isinstance(server.error, UnsupportedVersionError)


async def test_a_closing_error_from_the_client_stops_serving_without_an_answer(
    source: MemorySource, small_share: PatternShare
) -> None:
    async with serving(source) as (client, server):
        await client.send(ErrorReply(0, ErrorCode.BUSY, "bye"))
        assert isinstance(await client.message(), Hello)
        await server.ended()
        with pytest.raises(EOFError):
            await client.message()
    assert isinstance(server.error, TransferError)
    assert server.error.code == ErrorCode.BUSY


async def test_eof_inside_a_frame_is_a_violation(source: MemorySource) -> None:
    async with serving(source) as (client, server):
        hello = encode(client.hello)
        await client.stream.send_all(hello[:-1])
        await client.stream.send_eof()
        with pytest.raises(BadRequestError):
            await client.response()
        await server.ended()
    assert isinstance(server.error, RemoteProtocolError)


async def test_a_broken_stream_ends_serving_with_its_error(
    source: MemorySource, big_share: PatternShare
) -> None:
    async with serving(source, lockstep=True) as (client, server):
        request = client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST)
        await client.send(request)
        await client.response()
        await client.stream.receive_stream.aclose()
        await server.ended()
    assert isinstance(server.error, trio.BrokenResourceError)


async def test_nothing_is_logged_per_chunk_at_info(
    source: MemorySource, big_share: PatternShare, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(source) as (client, server):
        request = client.chunks(big_share, 0, MAX_CHUNKS_PER_REQUEST)
        await client.send(request)
        await client.finish(request.req_id)
        await client.stream.send_eof()
        await server.ended()
    assert [r for r in caplog.records if r.name.startswith("p2pshare")] == []


# --- backpressure (mock clock) ----------------------------------------------------------


async def test_a_client_that_never_reads_stalls_the_stream_instead_of_filling_memory(
    source: MemorySource, big_share: PatternShare, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(
        source, lockstep=True, max_outstanding=2, run_blocking=run_inline, timeout=100
    ) as (client, _server):
        await client.send()
        assert isinstance(await client.message(), Hello)
        frames = [
            encode(ChunkRequest(req_id, big_share.cid, 0, MAX_CHUNKS_PER_REQUEST))
            for req_id in range(1, 1001)
        ]
        sent = 0
        with trio.move_on_after(30):
            for frame in frames:
                await client.stream.send_all(frame)
                sent += 1
        # Requests 1 and 2 are accepted and the first DATA waits to be read; the BUSY
        # answer to request 3 waits behind it, and the server reads nothing more.
        assert sent == 3
        assert len(source.reads) == 1


# --- the upload limiter (mock clock) ----------------------------------------------------


async def test_the_limiter_paces_bytes_at_its_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate = 1 << 20
    limiter = UploadLimiter(rate)
    start_time = trio.current_time()
    for _ in range(160):  # 10 MiB in 64 KiB pieces; the first second's worth is the burst
        await limiter.acquire(64 * 1024)
    elapsed = trio.current_time() - start_time
    assert 9.0 - 1e-6 <= elapsed <= 9.0 + 0.01


async def test_streams_share_the_limiters_rate(autojump_clock: trio.testing.MockClock) -> None:
    limiter = UploadLimiter(100_000)
    sent = [0, 0, 0]

    async def upload(slot: int) -> None:
        while True:
            await limiter.acquire(10_000)
            sent[slot] += 10_000

    async with trio.open_nursery() as nursery:
        for slot in range(3):
            nursery.start_soon(upload, slot)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    # 20 s at 100 kB/s plus the initial 1 s burst, split fairly between the three.
    assert 2_090_000 <= sum(sent) <= 2_110_000
    assert max(sent) - min(sent) <= 10_000


async def test_a_piece_larger_than_a_seconds_worth_still_goes_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = UploadLimiter(1000)
    with trio.fail_after(100):
        start_time = trio.current_time()
        await limiter.acquire(5000)  # 1000 tokens at hand: 4 s for the rest
        await limiter.acquire(5000)
        elapsed = trio.current_time() - start_time
    assert 9.0 - 1e-6 <= elapsed <= 9.0 + 0.01


def rate_of(limiter: UploadLimiter) -> float | None:
    return limiter.rate  # a call, so mypy does not carry narrowing across set_rate


async def test_set_rate_applies_at_once_even_to_a_waiting_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = UploadLimiter(1000)
    await limiter.acquire(1000)  # the burst is spent
    done_at: list[float] = []

    async def wait_for_a_big_piece() -> None:
        await limiter.acquire(1_000_000)  # 1000 s at the first rate
        done_at.append(trio.current_time())

    start_time = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_a_big_piece)
        await trio.sleep(5)
        limiter.set_rate(None)
        assert rate_of(limiter) is None
    assert done_at == [start_time + 5]

    limiter.set_rate(10_000)
    assert rate_of(limiter) == 10_000
    start_time = trio.current_time()
    for _ in range(3):
        await limiter.acquire(10_000)
    assert 2.0 - 1e-6 <= trio.current_time() - start_time <= 2.01
    limiter.set_rate(0)
    assert rate_of(limiter) is None


def test_a_negative_or_infinite_rate_is_refused() -> None:
    for rate in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="upload rate"):
            UploadLimiter(rate)


async def test_serving_under_the_limiter_takes_bytes_over_rate(
    source: MemorySource, big_share: PatternShare, autojump_clock: trio.testing.MockClock
) -> None:
    rate = 256 * 1024
    limiter = UploadLimiter(rate)
    async with serving(source, limiter=limiter, run_blocking=run_inline, timeout=100) as (
        client,
        _server,
    ):
        requests = [client.chunks(big_share, 64 * n, MAX_CHUNKS_PER_REQUEST) for n in range(4)]
        start_time = trio.current_time()
        await client.send(*requests)
        await client.finish(*(r.req_id for r in requests))
        elapsed = trio.current_time() - start_time
    sent = 4 * MAX_CHUNKS_PER_REQUEST * (CHUNK + DATA_FRAME_OVERHEAD)
    expected = (sent - rate) / rate  # the first second's worth goes out at once
    assert expected - 1e-6 <= elapsed <= expected + 0.01
