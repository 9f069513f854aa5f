"""Malicious seeders against our downloader, in process over trio memory streams.

Each liar is one provider of a real Download.  Alone, it must end the download with
a typed error (and be banned when it sent forged data); beside an honest provider,
the download must still complete byte for byte.  Nothing may land outside the
destination.  Everything runs on trio's MockClock with autojump (the
``autojump_clock`` fixture): a provider that stalls costs the 60 s request timeout
in virtual time, not in real time.  The downloader's worker threads run inline so
the clock cannot jump while one is busy.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import pytest
import trio
import trio.testing

from p2pshare.errors import RemoteError, UserError, leaf_errors
from p2pshare.identity import NodeKey
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.canonical import pack
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, hash_chunk
from p2pshare.proto.cid import ContentId
from p2pshare.proto.errors import UnsafePathError
from p2pshare.proto.manifest import Entry, Manifest, ShareKind
from p2pshare.proto.signed_manifest import decode_signed_manifest, sign_manifest
from p2pshare.proto.transfer import (
    ChunkData,
    ChunkRequest,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    MessageType,
    NotAvailableError,
    Role,
    TransferDecoder,
    UnknownContentError,
    encode,
)
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.downloader import REQUEST_TIMEOUT, Download, Source
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.output import PartialOutput
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.transfer import ClientRequest
    from p2pshare.transfer.source import ContentSource

    MemoryStream = trio.StapledStream[
        trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream
    ]
    Behaviour = Callable[[MemoryStream], Awaitable[None]]
    Script = Callable[[MemoryStream, ClientRequest], Awaitable[None]]

T = TypeVar("T")

CHUNK = MIN_CHUNK_SIZE


class Seed:
    """A share on a seeder's store, and an empty getter."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed_catalog = Catalog(root / "seed.sqlite")
        self.store = ShareStore(self.seed_catalog, root / "content", NodeKey.generate(), CHUNK)
        self.data = os.urandom(12 * CHUNK + 77)
        (root / "file.bin").write_bytes(self.data)
        self.cid = ContentId.parse(self.store.commit(self.store.prepare(root / "file.bin")).cid)
        (root / "other.bin").write_bytes(b"some other share")
        other = self.store.commit(self.store.prepare(root / "other.bin")).cid
        self.other_manifest = self.store.signed_manifest(other).data
        self.catalog = Catalog(root / "getter.sqlite")
        self.local = LocalContent(ShareStore(self.catalog, root / "c2", NodeKey.generate(), CHUNK))
        self.out = root / "out"
        self.out.mkdir()
        self.dest = self.out / "file.bin"

    def close(self) -> None:
        self.seed_catalog.close()
        self.catalog.close()


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[Seed]:
    fixture = Seed(tmp_path)
    yield fixture
    fixture.close()


async def run_inline(fn: Callable[[], T]) -> T:
    """Blocking work (chunk hashing, writes, fsync) on the event loop, as MockClock needs."""
    await trio.lowlevel.checkpoint()
    return fn()


# Ends of a memory stream the downloader hung up on, or a provider that gave up.
HUNG_UP = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteError)


def serving(source: ContentSource) -> Behaviour:
    """A provider running our real uploader over ``source``."""

    async def serve(stream: MemoryStream) -> None:
        with contextlib.suppress(*HUNG_UP):
            await serve_transfer(stream, source, run_blocking=run_inline)
        await stream.aclose()

    return serve


class Lies(LocalContent):
    """The real share, with a different signed manifest and/or every chunk's first byte flipped."""

    def __init__(
        self, shares: ShareStore, *, manifest: bytes | None = None, flip: bool = False
    ) -> None:
        super().__init__(shares)
        self._manifest = manifest
        self._flip = flip

    def signed_manifest(self, cid: ContentId) -> bytes:
        return self._manifest if self._manifest is not None else super().signed_manifest(cid)

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        length = super().read_chunk_into(cid, global_index, out, wait=wait)
        if self._flip:
            out[0] ^= 1
        return length


# --- scripted liars: they speak the framing by hand -------------------------------------


async def first_request(stream: MemoryStream) -> ClientRequest:
    """Answer the client's HELLO like a real server, and return its first request."""
    decoder = TransferDecoder(Role.SERVER)
    while True:
        data = await stream.receive_some()
        if not data:
            raise trio.BrokenResourceError("the downloader hung up before asking anything")
        decoder.feed(data)
        while (message := decoder.next_message()) is not None:
            if isinstance(message, Hello):
                await stream.send_all(encode(Hello(1, Role.SERVER)))
            elif isinstance(message, GetManifest | GetPage | GetHave | ChunkRequest):
                return message


async def hold_until_hung_up(stream: MemoryStream) -> None:
    with contextlib.suppress(*HUNG_UP):
        while await stream.receive_some():
            pass


def scripted(script: Script) -> Behaviour:
    """A liar that follows the handshake, then runs ``script`` on the first request."""

    async def behave(stream: MemoryStream) -> None:
        with contextlib.suppress(*HUNG_UP):
            await script(stream, await first_request(stream))
            await hold_until_hung_up(stream)

    return behave


async def oversize_frame(stream: MemoryStream, request: ClientRequest) -> None:
    """A reply frame announcing 4 GiB: refused from its first five bytes, nothing buffered."""
    await stream.send_all((2**32 - 1).to_bytes(4, "big") + bytes([MessageType.MANIFEST]))
    await stream.send_all(bytes(CHUNK))


async def never_ending_frame(stream: MemoryStream, request: ClientRequest) -> None:
    """A frame whose announced body never arrives."""
    await stream.send_all((1000).to_bytes(4, "big") + bytes([MessageType.MANIFEST]) + bytes(10))


async def unsolicited_data(stream: MemoryStream, request: ClientRequest) -> None:
    """A chunk for a request the downloader never made."""
    await stream.send_all(encode(ChunkData(request.req_id + 1000, 0, bytes(CHUNK))))


def slowloris(seed: Seed) -> Behaviour:
    """The honest answer to the first request, one byte per second."""

    async def drip(stream: MemoryStream, request: ClientRequest) -> None:
        local = LocalContent(seed.store)
        if isinstance(request, GetManifest):
            manifest = local.signed_manifest(request.cid)
            reply = encode(ManifestReply(request.req_id, request.cid, manifest))
        elif isinstance(request, ChunkRequest):
            reply = b"".join(
                encode(ChunkData(request.req_id, i, seed.store.read_chunk(str(request.cid), i)))
                for i in request.chunks
            )
        else:
            assert isinstance(request, GetHave)
            have = local.have(request.cid, request.first_chunk, request.count)
            reply = encode(HaveReply(request.req_id, request.cid, request.first_chunk, have))
        for byte in reply:
            await stream.send_all(bytes([byte]))
            await trio.sleep(1)

    return scripted(drip)


# --- running a download against them -----------------------------------------------------


@dataclass
class Outcome:
    download: Download
    error: BaseException | None
    elapsed: float


async def no_more_sources(_want: int, _ask: list[str]) -> list[Source]:
    return []


async def fetch(
    cid: ContentId, seed: Seed, providers: dict[str, Behaviour], dest: Path | None = None
) -> Outcome:
    """Download ``cid`` from ``providers``; the leaf error, if any.

    Provider number ``i`` answers its dial after ``i`` virtual seconds, so the
    downloader lists them, and asks them for the manifest, in the order given.
    """
    order = list(providers)

    async def open_stream(source: Source) -> ByteStream:
        await trio.sleep(order.index(source.peer_id))
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(providers[source.peer_id], theirs)
        return ours

    download = Download(
        cid=cid,
        dest=dest or seed.dest,
        force=False,
        catalog=seed.catalog,
        local=seed.local,
        open_stream=open_stream,
        find_sources=no_more_sources,
        hints=[Source(name) for name in providers],
        run_blocking=run_inline,
    )
    started = trio.current_time()
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await download.run()
            nursery.cancel_scope.cancel()
    except Exception as exc:  # noqa: BLE001 - the tests inspect it
        (error,) = leaf_errors(exc)
    return Outcome(download, error, trio.current_time() - started)


def forged_manifest(seed: Seed) -> Behaviour:
    """Another share's valid manifest: its content ID is not the one asked for."""
    return serving(Lies(seed.store, manifest=seed.other_manifest))


def flipped_chunks(seed: Seed) -> Behaviour:
    return serving(Lies(seed.store, flip=True))


BANNED_LIARS = {"forged manifest": forged_manifest, "flipped chunks": flipped_chunks}
# Liars that break the protocol or stall are dropped (not banned: nothing forged
# arrived).  The bound is the virtual time the downloader may spend on one of them.
STALLS: dict[str, tuple[Callable[[Seed], Behaviour], float]] = {
    "oversize frame": (lambda _seed: scripted(oversize_frame), 0.0),
    "unsolicited chunk": (lambda _seed: scripted(unsolicited_data), 0.0),
    "never-ending frame": (lambda _seed: scripted(never_ending_frame), REQUEST_TIMEOUT),
    "slowloris": (slowloris, REQUEST_TIMEOUT),
}


@pytest.mark.parametrize("lie", BANNED_LIARS)
async def test_a_forging_seeder_alone_is_banned_and_nothing_is_finished(
    seed: Seed, lie: str, autojump_clock: trio.testing.MockClock
) -> None:
    outcome = await fetch(seed.cid, seed, {"liar": BANNED_LIARS[lie](seed)})
    assert isinstance(outcome.error, NoProvidersError), outcome.error
    assert outcome.download.report.banned == ["liar"]
    assert not seed.dest.exists()


@pytest.mark.parametrize("lie", STALLS)
async def test_a_stalling_or_garbling_seeder_alone_ends_in_a_typed_error_in_bounded_time(
    seed: Seed, lie: str, autojump_clock: trio.testing.MockClock
) -> None:
    make, bound = STALLS[lie]
    outcome = await fetch(seed.cid, seed, {"liar": make(seed)})
    assert isinstance(outcome.error, NoProvidersError), outcome.error
    assert outcome.download.report.banned == []
    assert bound <= outcome.elapsed <= bound + 1
    assert not seed.dest.exists()


@pytest.mark.parametrize("lie", [*STALLS, "forged manifest"])
async def test_an_honest_seeder_after_a_liar_completes_the_download(
    seed: Seed, lie: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The liar is asked for the manifest first; the honest seeder still finishes the job.

    A liar sending bad chunks beside an honest seeder: tests/transfer/test_download.py.
    """
    if lie == "forged manifest":
        liar, bound = forged_manifest(seed), 0.0
    else:
        make, bound = STALLS[lie]
        liar = make(seed)
    outcome = await fetch(
        seed.cid, seed, {"liar": liar, "honest": serving(LocalContent(seed.store))}
    )
    assert outcome.error is None, outcome.error
    assert seed.dest.read_bytes() == seed.data
    assert outcome.elapsed <= bound + 2
    assert outcome.download.report.banned == (["liar"] if lie == "forged manifest" else [])
    assert sorted(p.name for p in seed.out.iterdir()) == ["file.bin"]


async def test_a_content_id_naming_a_badly_signed_manifest_is_refused(
    seed: Seed, autojump_clock: trio.testing.MockClock
) -> None:
    signed = seed.store.signed_manifest(str(seed.cid))
    # The content ID fits these bytes exactly; only the signature inside is wrong.
    signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    forged = pack({"body": signed.body, "sig": signature})
    cid = ContentId.of(forged)
    outcome = await fetch(cid, seed, {"liar": serving(Lies(seed.store, manifest=forged))})
    assert isinstance(outcome.error, NoProvidersError), outcome.error
    assert outcome.download.report.banned == ["liar"]
    assert list(seed.out.iterdir()) == []


# --- directory manifests that try to escape ----------------------------------------------


@dataclass
class TreeSource:
    """A ContentSource for one hand-made directory share of one-byte ``x`` files.

    The manifest is built without ``build_manifest``'s checks, signed by a real key:
    its content ID fits it exactly, as a malicious publisher's would.
    """

    data: bytes
    total: int

    def signed_manifest(self, cid: ContentId) -> bytes:
        return self.data

    def page(self, cid: ContentId, page_index: int) -> bytes:
        raise NotAvailableError("no hash pages")

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        have = Bitfield(count)
        for offset in range(count):
            have.set(offset)
        return have

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        if global_index >= self.total:
            raise UnknownContentError("no such chunk")
        out[0:1] = b"x"
        return 1


def tree_share(paths: list[str]) -> tuple[ContentId, TreeSource]:
    key = NodeKey.generate()
    manifest = Manifest(
        kind=ShareKind.DIRECTORY,
        name="tree",
        publisher=key.public_key,
        created=1_700_000_000,
        chunk_size=CHUNK,
        entries=tuple(Entry(path, 1) for path in sorted(paths, key=str.encode)),
        inline_hashes=hash_chunk(b"x") * len(paths),
        page_hashes=(),
    )
    signed = sign_manifest(manifest, key)
    return signed.cid, TreeSource(signed.data, len(paths))


DEEPEST = "/".join(["d"] * 63 + ["f"])  # 64 components: the deepest path allowed
EVIL_TREES = {
    "parent": ["ok", "../escaped"],
    "parent inside": ["a/../../escaped"],
    "absolute": ["/tmp/escaped"],
    "dot": ["a/./b"],
    "empty component": ["a//b"],
    "backslash": ["..\\escaped"],
    "control character": ["a\x1b[2Jb"],
    "duplicate": ["same", "same"],
    "case collision": ["Readme", "README"],
    "file and directory": ["a", "a/b"],
    "too deep": [f"d/{DEEPEST}"],
}


@pytest.mark.parametrize("tree", EVIL_TREES)
async def test_an_unsafe_directory_manifest_writes_nothing(
    seed: Seed, tree: str, autojump_clock: trio.testing.MockClock
) -> None:
    cid, source = tree_share(EVIL_TREES[tree])
    with pytest.raises(UnsafePathError):
        decode_signed_manifest(source.data, cid)
    dest = seed.out / "tree"
    before = sorted(seed.root.rglob("*"))
    outcome = await fetch(cid, seed, {"publisher": serving(source)}, dest)
    assert isinstance(outcome.error, NoProvidersError), outcome.error
    # The manifest is refused before any partial directory exists.
    assert sorted(seed.root.rglob("*")) == before
    assert list(seed.out.iterdir()) == []


async def test_the_deepest_allowed_tree_is_materialised_inside_the_destination(
    seed: Seed, autojump_clock: trio.testing.MockClock
) -> None:
    """The control for the test above: a tree at the limits does download."""
    cid, source = tree_share([DEEPEST, "top"])
    dest = seed.out / "tree"
    outcome = await fetch(cid, seed, {"publisher": serving(source)}, dest)
    assert outcome.error is None, outcome.error
    assert (dest / DEEPEST).read_bytes() == b"x"
    assert (dest / "top").read_bytes() == b"x"
    assert [p.name for p in seed.out.iterdir()] == ["tree"]


@pytest.mark.parametrize("planted", ["parent directory", "file"])
def test_symlinks_planted_in_a_partial_directory_are_not_followed(
    tmp_path: Path, planted: str
) -> None:
    """Someone with access to the output directory plants links in a resumed partial."""
    _cid, source = tree_share(["sub/f", "g"])
    manifest = decode_signed_manifest(source.data).manifest
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"precious")
    (outside / "g").write_bytes(b"precious")
    output = PartialOutput(tmp_path / "tree", manifest)
    output.open(resume=False)
    if planted == "file":
        (output.path / "g").symlink_to(outside / "g")
        target = manifest.entries.index(Entry("g", 1))
    else:
        (output.path / "sub").symlink_to(outside, target_is_directory=True)
        target = manifest.entries.index(Entry("sub/f", 1))
    assert output.open(resume=True), "the partial is reused as is"
    with pytest.raises(UserError):
        output.write_chunk(manifest.chunks_of(target)[0], b"y")
    output.close()
    assert (outside / "f").read_bytes() == b"precious"
    assert (outside / "g").read_bytes() == b"precious"
