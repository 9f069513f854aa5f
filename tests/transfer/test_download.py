"""The downloader against in-process uploaders over trio memory streams.

Honest providers serve a real share from a ShareStore; a lying one flips bytes in
some chunks; a stalling one stops after a few chunks. No sockets, no libp2p.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pshare.errors import leaf_errors
from p2pshare.identity import NodeKey
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import Catalog, DownloadRow
from p2pshare.store.shares import ShareStore
from p2pshare.transfer import downloader
from p2pshare.transfer.downloader import Download, NoProvidersError, Source
from p2pshare.transfer.output import DestinationExistsError, PartialOutput, partial_path
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.chunks import BytesLike

CHUNK = MIN_CHUNK_SIZE


class LyingSource(LocalContent):
    """Serves the share but flips one byte of every chunk in ``bad``."""

    def __init__(self, shares: ShareStore, bad: set[int]) -> None:
        super().__init__(shares)
        self.bad = bad
        self.served: list[int] = []

    def read_chunk(self, cid: ContentId, global_index: int) -> bytes:
        data = super().read_chunk(cid, global_index)
        self.served.append(global_index)
        if global_index in self.bad:
            return bytes([data[0] ^ 1]) + data[1:]
        return data


class StallingSource(LocalContent):
    """Serves ``limit`` chunks, then never answers again."""

    def __init__(self, shares: ShareStore, limit: int, stalled: trio.Event) -> None:
        super().__init__(shares)
        self.limit = limit
        self.served = 0
        self.stalled = stalled

    def read_chunk(self, cid: ContentId, global_index: int) -> bytes:
        if self.served >= self.limit:
            self.stalled.set()
            raise RuntimeError("unreachable: the test cancels before this")
        self.served += 1
        return super().read_chunk(cid, global_index)


class Fixture:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed_catalog = Catalog(root / "seed.sqlite")
        self.seed = ShareStore(self.seed_catalog, root / "content", NodeKey.generate(), CHUNK)
        self.data = os.urandom(40 * CHUNK + 77)
        (root / "file.bin").write_bytes(self.data)
        self.cid = ContentId.parse(self.seed.commit(self.seed.prepare(root / "file.bin")).cid)
        self.catalog = Catalog(root / "getter.sqlite")
        self.local = LocalContent(ShareStore(self.catalog, root / "c2", NodeKey.generate(), CHUNK))

    def close(self) -> None:
        self.seed_catalog.close()
        self.catalog.close()


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.close()


async def inline(fn: Callable[[], object]) -> object:
    return fn()


def serving(nursery: trio.Nursery, sources: dict[str, LocalContent]) -> Callable[[Source], object]:
    async def open_stream(source: Source) -> ByteStream:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(_serve, server, sources[source.peer_id])
        return client

    return open_stream


async def _serve(stream: ByteStream, source: LocalContent) -> None:
    try:
        await serve_transfer(stream, source, run_blocking=inline)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a provider failing is part of these tests
        await stream.aclose()


async def no_more_sources() -> list[Source]:
    return []


def download(
    fx: Fixture, nursery: trio.Nursery, sources: dict[str, LocalContent], dest: Path
) -> Download:
    return Download(
        cid=fx.cid,
        dest=dest,
        force=False,
        catalog=fx.catalog,
        local=fx.local,
        open_stream=serving(nursery, sources),  # type: ignore[arg-type]
        find_sources=no_more_sources,
        hints=[Source(name) for name in sources],
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_single_source_byte_for_byte(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"honest": LocalContent(fx.seed)}, dest).run()
        nursery.cancel_scope.cancel()
    assert sha(dest.read_bytes()) == sha(fx.data)
    assert report.requested_bytes == len(fx.data)
    assert not partial_path(dest).exists()


async def test_multi_source_uses_every_provider(fx: Fixture) -> None:
    sources = {f"p{i}": LyingSource(fx.seed, set()) for i in range(3)}
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, dict(sources), dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert sorted(report.peers) == ["p0", "p1", "p2"]
    assert all(source.served for source in sources.values())


async def test_a_lying_peer_is_banned_and_honest_peers_finish(fx: Fixture) -> None:
    liar = LyingSource(fx.seed, bad=set(range(41)))
    honest = LyingSource(fx.seed, set())
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"liar": liar, "honest": honest}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.banned == ["liar"]
    assert liar.served, "the liar was asked and caught"


async def failure_of(fx: Fixture, sources: dict[str, LocalContent], dest: Path) -> BaseException:
    """The single error a download ends with, looked up through trio's exception groups."""
    try:
        async with trio.open_nursery() as nursery:
            await download(fx, nursery, sources, dest).run()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        (leaf,) = leaf_errors(exc)
        return leaf
    raise AssertionError("the download did not fail")


async def test_only_liars_means_no_file_and_a_clear_error(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    error = await failure_of(fx, {"liar": LyingSource(fx.seed, bad={0})}, dest)
    assert isinstance(error, NoProvidersError)
    assert "run the same get again to resume" in str(error)
    assert not dest.exists()


async def test_resume_fetches_no_verified_chunk_twice(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    stalled = trio.Event()
    staller = StallingSource(fx.seed, limit=10, stalled=stalled)
    async with trio.open_nursery() as nursery:
        first = download(fx, nursery, {"staller": staller}, dest)

        async def stop_when_stalled() -> None:
            await stalled.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_stalled)
        await first.run()
    row = fx.catalog.download(str(fx.cid))
    assert row is not None
    verified = Bitfield.from_bytes(row.verified, 41)
    assert 1 <= verified.count() <= 10
    missing = list(verified.iter_missing())
    honest = LyingSource(fx.seed, set())
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"honest": honest}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.resumed_chunks == verified.count()
    assert sorted(honest.served) == missing, "no verified chunk is fetched twice"
    assert report.requested_bytes == sum(
        fx.seed.signed_manifest(str(fx.cid)).manifest.locate_chunk(i).length for i in missing
    )


async def test_an_existing_destination_is_refused(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    dest.write_bytes(b"keep me")
    error = await failure_of(fx, {"honest": LocalContent(fx.seed)}, dest)
    assert isinstance(error, DestinationExistsError)
    assert dest.read_bytes() == b"keep me"


async def test_progress_names_only_chunks_synced_to_disk(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: set[int] = set()
    synced: set[int] = set()
    recorded: list[set[int]] = []
    write_chunk, sync, save = PartialOutput.write_chunk, PartialOutput.sync, Catalog.save_download

    def spy_write(self: PartialOutput, index: int, data: BytesLike) -> None:
        write_chunk(self, index, data)
        written.add(index)

    def spy_sync(self: PartialOutput) -> None:
        before = set(written)
        sync(self)
        synced.update(before)

    def spy_save(self: Catalog, row: DownloadRow) -> None:
        bits = Bitfield.from_bytes(row.verified, 41)
        recorded.append(set(bits.iter_set()))
        assert recorded[-1] <= synced, "a chunk was recorded before it was synced"
        save(self, row)

    monkeypatch.setattr(PartialOutput, "write_chunk", spy_write)
    monkeypatch.setattr(PartialOutput, "sync", spy_sync)
    monkeypatch.setattr(Catalog, "save_download", spy_save)
    monkeypatch.setattr(downloader, "PERSIST_EVERY_CHUNKS", 2)
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        await download(fx, nursery, {"honest": LocalContent(fx.seed)}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert recorded[-1] == set(range(41))
    assert len(recorded) > 3
