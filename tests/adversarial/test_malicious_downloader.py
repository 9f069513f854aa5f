"""Malicious downloaders against our uploader, in process over trio memory streams.

Every attack runs while an honest downloader (the real PeerLink) fetches the whole
share from the same ContentSource, and that download must complete and verify.  An
attacker that breaks the protocol gets a closing ERROR 0 and loses its stream (the
HandlerGuard resets it); one that only stalls holds a single stream, and the
per-peer stream cap bounds how many it can hold.  Stalls run on trio's MockClock
(the ``autojump_clock`` fixture); source calls run inline so the clock cannot jump
while one is busy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
import trio.testing
from libp2p.network.stream.exceptions import StreamEOF

from p2pshare.errors import RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.net.streams import HandlerGuard, HandlerLimits, LibP2PStream
from p2pshare.proto.canonical import pack
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, verify_chunk
from p2pshare.proto.cid import ContentId
from p2pshare.proto.framing import encode_frame
from p2pshare.proto.manifest import MAX_PAGES, MAX_TOTAL_CHUNKS, expected_chunk_hash
from p2pshare.proto.signed_manifest import decode_signed_manifest
from p2pshare.proto.transfer import (
    MAX_CHUNKS_PER_REQUEST,
    MAX_HAVE_CHUNKS,
    PROTOCOL_ID,
    ChunkRequest,
    ErrorCode,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    Hello,
    ManifestReply,
    Message,
    MessageType,
    Role,
    TransferDecoder,
    encode,
)
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.peer import PeerLink
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from libp2p.abc import IHost

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.signed_manifest import SignedManifest

    TestStream = trio.StapledStream[Any, Any]

CHUNK = MIN_CHUNK_SIZE
HELLO = encode(Hello(1, Role.CLIENT))


class Seeder:
    """A node sharing one file of 12 chunks and a bit."""

    def __init__(self, root: Path) -> None:
        self.catalog = Catalog(root / "seed.sqlite")
        store = ShareStore(self.catalog, root / "content", NodeKey.generate(), CHUNK)
        self.data = os.urandom(12 * CHUNK + 77)
        (root / "file.bin").write_bytes(self.data)
        self.cid = ContentId.parse(store.commit(store.prepare(root / "file.bin")).cid)
        self.signed: SignedManifest = store.signed_manifest(str(self.cid))
        self.source = LocalContent(store)


@pytest.fixture
def seeder(tmp_path: Path) -> Iterator[Seeder]:
    node = Seeder(tmp_path)
    yield node
    node.catalog.close()


async def run_inline(fn: Callable[[], Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return fn()


@dataclass
class Served:
    """How serve_transfer ended for one stream (closed afterwards, as the guard does)."""

    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


def serve(nursery: trio.Nursery, seeder: Seeder, stream: ByteStream) -> Served:
    served = Served()

    async def run() -> None:
        try:
            await serve_transfer(stream, seeder.source, peer="p", run_blocking=run_inline)
        except Exception as exc:  # noqa: BLE001 - the tests inspect it
            served.error = exc
        finally:
            await stream.aclose()
            served.done.set()

    nursery.start_soon(run)
    return served


async def honest_download(stream: ByteStream, seeder: Seeder) -> bytes:
    """The whole share through the downloader's own PeerLink, every chunk verified."""
    link = PeerLink(stream, "honest", max_chunk_size=CHUNK)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        signed = decode_signed_manifest(await link.manifest(seeder.cid), seeder.cid)
        manifest = signed.manifest
        parts = []
        for first in range(0, manifest.total_chunks, MAX_CHUNKS_PER_REQUEST):
            run = range(first, min(first + MAX_CHUNKS_PER_REQUEST, manifest.total_chunks))
            async for index, payload in link.chunks(
                seeder.cid, run, lambda i: manifest.locate_chunk(i).length
            ):
                verify_chunk(expected_chunk_hash(manifest, index), payload)
                parts.append(bytes(payload))
        await link.aclose()
        nursery.cancel_scope.cancel()
    return b"".join(parts)


async def frames_until_eof(stream: TestStream) -> list[Message]:
    """Everything the server sends until it closes the stream."""
    decoder = TransferDecoder(Role.CLIENT)
    messages: list[Message] = []
    while data := await stream.receive_some():
        decoder.feed(data)
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    return messages


def raw_frame(kind: int, fields: list[object]) -> bytes:
    """A frame our encoder would refuse to build."""
    return encode_frame(bytes([kind]) + pack(fields), 1 << 20)


def violations(cid: ContentId) -> dict[str, bytes]:
    """What each attacker sends (after HELLO, unless the attack is skipping it)."""
    wire = cid.to_bytes()
    return {
        "4 GiB frame": (2**32 - 1).to_bytes(4, "big") + bytes([MessageType.GET_MANIFEST]),
        "DATA sent to a server": encode_frame(
            bytes([MessageType.DATA, *bytes(8 + CHUNK)]), 1 << 20
        ),
        "unknown type": raw_frame(0x7F, []),
        "65 chunks in one request": raw_frame(MessageType.REQUEST, [1, wire, 0, 65]),
        "range past 2^28": raw_frame(MessageType.REQUEST, [1, wire, MAX_TOTAL_CHUNKS - 1, 2]),
        "HAVE of 2^23 + 1": raw_frame(MessageType.GET_HAVE, [1, wire, 0, MAX_HAVE_CHUNKS + 1]),
        "boolean request id": raw_frame(MessageType.GET_MANIFEST, [True, wire]),
        "a second HELLO": HELLO,
    }


VIOLATIONS = list(violations(ContentId(bytes(32))))


@pytest.mark.parametrize("attack", VIOLATIONS)
async def test_a_protocol_violation_closes_only_that_stream(
    seeder: Seeder, attack: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            attacker, theirs = trio.testing.memory_stream_pair()
            attacked = serve(nursery, seeder, theirs)
            honest, ours = trio.testing.memory_stream_pair()
            serve(nursery, seeder, ours)
            await attacker.send_all(HELLO + violations(seeder.cid)[attack])
            assert await honest_download(honest, seeder) == seeder.data
            messages = await frames_until_eof(attacker)
            await attacked.done.wait()
    assert messages == [Hello(1, Role.SERVER), messages[-1]]
    closing = messages[-1]
    assert isinstance(closing, ErrorReply)
    assert (closing.req_id, closing.code) == (0, ErrorCode.BAD_REQUEST)
    assert isinstance(attacked.error, RemoteProtocolError)


async def test_impossible_ranges_are_refused_one_by_one_and_the_stream_stays_usable(
    seeder: Seeder, autojump_clock: trio.testing.MockClock
) -> None:
    """Huge but well-formed requests cost the server a range check, nothing more."""
    cid = seeder.cid
    requests: list[Message] = [
        GetHave(1, cid, 0, MAX_HAVE_CHUNKS),
        ChunkRequest(2, cid, MAX_TOTAL_CHUNKS - MAX_CHUNKS_PER_REQUEST, MAX_CHUNKS_PER_REQUEST),
        GetPage(3, cid, MAX_PAGES - 1),
        GetManifest(4, cid),
    ]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            attacker, theirs = trio.testing.memory_stream_pair()
            attacked = serve(nursery, seeder, theirs)
            await attacker.send_all(HELLO + b"".join(encode(r) for r in requests))
            await attacker.send_eof()
            messages = await frames_until_eof(attacker)
            await attacked.done.wait()
    refusals = {(m.req_id, m.code) for m in messages if isinstance(m, ErrorReply)}
    assert refusals == {
        (1, ErrorCode.BAD_REQUEST),
        (2, ErrorCode.BAD_REQUEST),
        (3, ErrorCode.BAD_REQUEST),
    }
    assert ManifestReply(4, cid, seeder.signed.data) in messages
    assert attacked.error is None, "a well-formed impossible request is not a violation"


async def dribble(stream: TestStream, data: bytes) -> None:
    """Send ``data`` one byte per second, then EOF."""
    for byte in data:
        await stream.send_all(bytes([byte]))
        await trio.sleep(1)
    await stream.send_eof()


async def test_slow_and_never_ending_frames_hold_one_stream_and_nothing_else(
    seeder: Seeder, autojump_clock: trio.testing.MockClock
) -> None:
    never_ending = (60_000).to_bytes(4, "big") + bytes([MessageType.GET_MANIFEST]) + bytes(10)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            slow, slow_end = trio.testing.memory_stream_pair()
            stuck, stuck_end = trio.testing.memory_stream_pair()
            slow_served = serve(nursery, seeder, slow_end)
            stuck_served = serve(nursery, seeder, stuck_end)
            request = HELLO + encode(GetManifest(1, seeder.cid))
            nursery.start_soon(dribble, slow, request)
            await stuck.send_all(HELLO + never_ending)
            honest, ours = trio.testing.memory_stream_pair()
            serve(nursery, seeder, ours)
            started = trio.current_time()
            assert await honest_download(honest, seeder) == seeder.data
            assert trio.current_time() == started, "the honest download waited for nobody"
            # The slow client is served once its request is whole, at one byte a second.
            reply = ManifestReply(1, seeder.cid, seeder.signed.data)
            assert await frames_until_eof(slow) == [Hello(1, Role.SERVER), reply]
            await slow_served.done.wait()
            assert slow_served.error is None
            assert trio.current_time() - started >= len(request) - 1
            # The unfinished frame still holds its stream: no deadline bounds it, the
            # per-peer stream cap does (the test below).
            assert not stuck_served.done.is_set()
            await stuck.send_eof()
            await stuck_served.done.wait()
    assert isinstance(stuck_served.error, RemoteProtocolError)


async def test_a_client_that_never_reads_does_not_starve_the_others(
    seeder: Seeder, autojump_clock: trio.testing.MockClock
) -> None:
    total = seeder.signed.manifest.total_chunks
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # A lockstep stream: the server's writes block until the attacker reads.
            attacker, theirs = trio.testing.lockstep_stream_pair()
            attacked = serve(nursery, seeder, theirs)
            hog = [encode(ChunkRequest(i, seeder.cid, 0, total)) for i in range(1, 17)]
            await attacker.send_all(HELLO + b"".join(hog))
            honest, ours = trio.testing.memory_stream_pair()
            serve(nursery, seeder, ours)
            assert await honest_download(honest, seeder) == seeder.data
            assert not attacked.done.is_set()
            nursery.cancel_scope.cancel()


# --- thousands of streams from one peer, through the HandlerGuard ------------------------


@dataclass
class FakeConnection:
    peer_id: str


class FakeNetStream:
    """The server end of a libp2p stream, over a trio memory stream."""

    def __init__(self, peer: str, stream: TestStream) -> None:
        self.muxed_conn = FakeConnection(peer)
        self._stream = stream
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        data = await self._stream.receive_some(n)
        if not data:
            raise StreamEOF
        return bytes(data)

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def close(self) -> None:
        await self._stream.aclose()

    async def reset(self) -> None:
        self.was_reset = True
        await self._stream.aclose()


class FakeHost:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[FakeNetStream], Awaitable[None]]] = {}

    def set_stream_handler(
        self, protocol: str, handler: Callable[[FakeNetStream], Awaitable[None]]
    ) -> None:
        self.handlers[protocol] = handler


async def test_thousands_of_streams_from_one_peer_are_capped_and_others_are_served(
    seeder: Seeder,
) -> None:
    host = FakeHost()
    limits = HandlerLimits()
    guard = HandlerGuard(cast("IHost", host), limits)

    async def handler(stream: LibP2PStream) -> None:
        await serve_transfer(stream, seeder.source, peer=stream.peer_id, run_blocking=run_inline)

    guard.register(PROTOCOL_ID, handler, bounded=False)
    guarded = host.handlers[PROTOCOL_ID]
    attempts = 2000
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            held, server_ends = [], []
            for _ in range(attempts):
                ours, theirs = trio.testing.memory_stream_pair()
                await ours.send_all(HELLO)
                held.append(ours)
                server_ends.append(FakeNetStream("mallory", theirs))
                nursery.start_soon(guarded, server_ends[-1])
            await trio.testing.wait_all_tasks_blocked()
            assert guard.active_streams("mallory") == limits.streams_per_peer
            refused = sum(end.was_reset for end in server_ends)
            assert refused == attempts - limits.streams_per_peer

            honest, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(guarded, FakeNetStream("alice", theirs))
            assert await honest_download(honest, seeder) == seeder.data

            for stream in held:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert guard.active_streams("mallory") == 0
