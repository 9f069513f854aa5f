"""A disk that fills up mid-download, injected at the output layer (no mount needed).

The daemon-level variant on a real, small tmpfs is in test_faults.py; this one runs
anywhere.  What must hold: a clear error, no file at the destination, a progress
record that claims only chunks really written, and a resume that finishes the file
byte for byte without fetching those chunks again.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pshare.errors import UserError, leaf_errors
from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.store.catalog import Catalog
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.destination import NoSpaceError
from p2pshare.transfer.downloader import Download, DownloadReport, Source
from p2pshare.transfer.output import PartialOutput, partial_path
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import serve_transfer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.chunks import BytesLike

CHUNK = MIN_CHUNK_SIZE


class Disk:
    """``os.pwrite`` with ``free`` bytes left: a short write, then ENOSPC, like a real one."""

    def __init__(self, free: int) -> None:
        self.free = free
        self._pwrite = os.pwrite

    def pwrite(self, fd: int, data: BytesLike, offset: int) -> int:
        if self.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._pwrite(fd, memoryview(data)[: self.free], offset)
        self.free -= written
        return written


async def no_more_sources(_want: int, _ask: list[str]) -> list[Source]:
    return []


def plenty(_directory: Path) -> int:
    return 1 << 40


async def download(
    root: Path,
    store: ShareStore,
    catalog: Catalog,
    cid: ContentId,
    free_space: Callable[[Path], int] = plenty,
) -> DownloadReport:
    local = LocalContent(ShareStore(catalog, root / "c2", NodeKey.generate(), CHUNK))
    async with trio.open_nursery() as nursery:

        async def open_stream(_source: Source) -> ByteStream:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(serve, theirs)
            return ours

        async def serve(stream: ByteStream) -> None:
            try:
                await serve_transfer(stream, LocalContent(store))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

        report = await Download(
            cid=cid,
            dest=root / "out" / "file.bin",
            force=False,
            catalog=catalog,
            local=local,
            open_stream=open_stream,
            find_sources=no_more_sources,
            hints=[Source("seeder")],
            free_space=free_space,
        ).run()
        nursery.cancel_scope.cancel()
    return report


async def test_a_full_disk_fails_clearly_and_resumes_without_refetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_catalog, catalog = Catalog(tmp_path / "seed.sqlite"), Catalog(tmp_path / "g.sqlite")
    store = ShareStore(seed_catalog, tmp_path / "content", NodeKey.generate(), CHUNK)
    data = os.urandom(40 * CHUNK + 77)
    (tmp_path / "file.bin").write_bytes(data)
    cid = ContentId.parse(store.commit(store.prepare(tmp_path / "file.bin")).cid)
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "file.bin"
    room = 10 * CHUNK + CHUNK // 2
    disk = Disk(free=room)
    monkeypatch.setattr(os, "pwrite", disk.pwrite)
    try:
        with trio.fail_after(30):
            with pytest.raises(BaseException) as failure:  # noqa: PT011 - the leaf is checked
                await download(tmp_path, store, catalog, cid)
            (error,) = leaf_errors(failure.value)
            assert isinstance(error, UserError)
            assert str(error).startswith(f"cannot write {partial_path(dest)}: ")
            assert "resumes with the same command" in str(error)
            assert not dest.exists()

            disk.free = len(data)
            report = await download(tmp_path, store, catalog, cid)
        assert dest.read_bytes() == data
        # Each download starts at a chunk of its own, so the short last chunk may be
        # among those the full disk let through.
        resumed = report.resumed_chunks
        kept = len(data) - report.requested_bytes
        assert 0 < kept <= room
        assert kept in {resumed * CHUNK, (resumed - 1) * CHUNK + 77}
    finally:
        seed_catalog.close()
        catalog.close()


async def test_content_bigger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    """Field test #26: the manifest gives the size; a 24 MB file did not fit in 20 MB."""
    seed_catalog, catalog = Catalog(tmp_path / "seed.sqlite"), Catalog(tmp_path / "g.sqlite")
    store = ShareStore(seed_catalog, tmp_path / "content", NodeKey.generate(), CHUNK)
    data = os.urandom(40 * CHUNK)
    (tmp_path / "file.bin").write_bytes(data)
    cid = ContentId.parse(store.commit(store.prepare(tmp_path / "file.bin")).cid)
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "file.bin"
    asked: list[Path] = []

    def small_disk(directory: Path) -> int:
        asked.append(directory)
        return len(data) - 1

    try:
        with trio.fail_after(30):
            with pytest.raises(BaseException) as failure:  # noqa: PT011 - the leaf is checked
                await download(tmp_path, store, catalog, cid, small_disk)
            (error,) = leaf_errors(failure.value)
            assert isinstance(error, NoSpaceError)
            assert str(error) == (
                f"not enough free space for {cid} in {dest.parent}: it needs 655360 bytes more "
                "and 655359 bytes are free; free some space or choose another -o, then run "
                "the same command again"
            )
            assert asked == [dest.parent]
            assert list((tmp_path / "out").iterdir()) == []
            report = await download(tmp_path, store, catalog, cid)
        assert dest.read_bytes() == data
        assert report.resumed_chunks == 0
    finally:
        seed_catalog.close()
        catalog.close()


async def test_a_resume_needs_room_only_for_the_chunks_still_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_catalog, catalog = Catalog(tmp_path / "seed.sqlite"), Catalog(tmp_path / "g.sqlite")
    store = ShareStore(seed_catalog, tmp_path / "content", NodeKey.generate(), CHUNK)
    data = os.urandom(40 * CHUNK)
    (tmp_path / "file.bin").write_bytes(data)
    cid = ContentId.parse(store.commit(store.prepare(tmp_path / "file.bin")).cid)
    (tmp_path / "out").mkdir()
    disk = Disk(free=10 * CHUNK)
    monkeypatch.setattr(os, "pwrite", disk.pwrite)
    try:
        with trio.fail_after(30):
            with pytest.raises(BaseException) as full:  # noqa: PT011 - the leaf is checked
                await download(tmp_path, store, catalog, cid)
            assert "No space left" in str(leaf_errors(full.value)[0])
            row = catalog.download(str(cid))
            assert row is not None
            verified = sum(bin(b).count("1") for b in row.verified)
            assert verified > 0
            missing = len(data) - verified * CHUNK
            disk.free = len(data)
            with pytest.raises(BaseException) as failure:  # noqa: PT011 - the leaf is checked
                await download(tmp_path, store, catalog, cid, lambda _d: missing - 1)
            assert isinstance(leaf_errors(failure.value)[0], NoSpaceError)
            report = await download(tmp_path, store, catalog, cid, lambda _d: missing)
        assert report.resumed_chunks == verified
        assert (tmp_path / "out" / "file.bin").read_bytes() == data
    finally:
        seed_catalog.close()
        catalog.close()


async def test_a_record_never_claims_chunks_of_a_partial_made_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial was deleted; the new one is made only once the record says 0 chunks,
    so a crash in between cannot leave a record claiming chunks an empty file lacks."""
    seed_catalog, catalog = Catalog(tmp_path / "seed.sqlite"), Catalog(tmp_path / "g.sqlite")
    store = ShareStore(seed_catalog, tmp_path / "content", NodeKey.generate(), CHUNK)
    (tmp_path / "file.bin").write_bytes(os.urandom(20 * CHUNK))
    cid = ContentId.parse(store.commit(store.prepare(tmp_path / "file.bin")).cid)
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os, "pwrite", Disk(free=5 * CHUNK).pwrite)
    try:
        with trio.fail_after(30):
            with pytest.raises(BaseException):  # noqa: B017, PT011 - the disk filled up
                await download(tmp_path, store, catalog, cid)
            row = catalog.download(str(cid))
            assert row is not None
            assert any(row.verified)
            partial_path(tmp_path / "out" / "file.bin").unlink()

            def crash(_self: PartialOutput, *, resume: bool) -> bool:
                raise OSError(errno.EIO, f"crashed (resume={resume})")

            monkeypatch.setattr(PartialOutput, "open", crash)
            with pytest.raises(BaseException):  # noqa: B017, PT011 - the crash above
                await download(tmp_path, store, catalog, cid)
        row = catalog.download(str(cid))
        assert row is not None
        assert not any(row.verified)
    finally:
        seed_catalog.close()
        catalog.close()
