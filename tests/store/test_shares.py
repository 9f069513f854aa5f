"""The share store on real files in a temporary directory (no daemon)."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, verify_chunk
from p2pshare.proto.manifest import INLINE_MAX_CHUNKS
from p2pshare.store import shares as shares_module
from p2pshare.store.catalog import (
    MIGRATIONS,
    Catalog,
    DownloadRow,
    KnownPeer,
    ProvideStatus,
)
from p2pshare.store.checked import RACY_NS
from p2pshare.store.lifecycle import DownloadState
from p2pshare.store.shares import ShareStore, StaleShareError, UnknownShareError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHUNK = MIN_CHUNK_SIZE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShareStore]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    yield ShareStore(catalog, tmp_path / "content", NodeKey.from_seed(bytes(32)), CHUNK)
    catalog.close()


def share(store: ShareStore, path: Path, **kwargs: object) -> str:
    return store.commit(store.prepare(path, **kwargs)).cid  # type: ignore[arg-type]


def all_chunks(store: ShareStore, cid: str) -> bytes:
    manifest = store.signed_manifest(cid).manifest
    return b"".join(store.read_chunk(cid, i) for i in range(manifest.total_chunks))


def test_sharing_the_same_file_twice_gives_the_same_cid(store: ShareStore, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3 * CHUNK + 5))
    first = share(store, path)
    assert share(store, path) == first
    assert [row.cid for row in store.catalog.shares()] == [first]


def test_directory_order_does_not_matter_and_chunks_read_back(
    store: ShareStore, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "b").mkdir(parents=True)
    files = {"z.txt": b"z" * (CHUNK + 1), "b/a.bin": os.urandom(2 * CHUNK), "empty": b""}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    cid = share(store, tree, name="tree")
    manifest = store.signed_manifest(cid).manifest
    assert [e.path for e in manifest.entries] == ["b/a.bin", "empty", "z.txt"]
    assert all_chunks(store, cid) == files["b/a.bin"] + files["z.txt"]


def test_symlinks_are_skipped_and_never_served(store: ShareStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"private")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_bytes(b"public")
    (tree / "link").symlink_to(secret)
    (tree / "dirlink").symlink_to(tmp_path)
    prepared = store.prepare(tree)
    assert sorted(prepared.scan.skipped) == [("dirlink", "symlink"), ("link", "symlink")]
    cid = store.commit(prepared).cid
    assert [e.path for e in store.signed_manifest(cid).manifest.entries] == ["ok.txt"]
    assert all_chunks(store, cid) == b"public"


def test_a_file_replaced_by_a_symlink_is_not_followed(store: ShareStore, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x" * 10)
    cid = share(store, tree)
    (tree / "f").unlink()
    (tree / "f").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StaleShareError):
        store.read_chunk(cid, 0)


def test_modified_file_is_never_served_as_the_old_content(
    store: ShareStore, tmp_path: Path
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * (2 * CHUNK))
    cid = share(store, path)
    assert store.read_chunk(cid, 1) == b"a" * CHUNK
    path.write_bytes(b"b" * (2 * CHUNK))
    with pytest.raises(StaleShareError, match="changed on disk"):
        store.read_chunk(cid, 1)
    row = store.catalog.share(cid)
    assert row is not None
    assert row.stale_reason
    # Even after restoring the bytes the share stays stale until shared again.
    path.write_bytes(b"a" * (2 * CHUNK))
    with pytest.raises(StaleShareError):
        store.read_chunk(cid, 0)
    again = share(store, path)
    assert store.read_chunk(again, 0) == b"a" * CHUNK


def test_content_changed_with_mtime_restored_is_caught_by_the_hash(
    store: ShareStore, tmp_path: Path
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * CHUNK)
    before = path.stat()
    cid = share(store, path)
    with path.open("r+b") as f:
        f.write(b"b")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(StaleShareError, match="no longer holds"):
        store.read_chunk(cid, 0)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The chunk indexes the store hashes while serving, in order."""
    calls: list[int] = []
    real = verify_chunk

    def counting(expected: bytes, data: bytes) -> None:
        calls.append(len(calls))
        real(expected, data)

    monkeypatch.setattr(shares_module, "verify_chunk", counting)
    return calls


def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the clock reads as if every file had been written long ago."""
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 10 * RACY_NS)


def wait_for_next_ctime(path: Path) -> None:
    """Return once an edit would give ``path`` a new ctime (the kernel's clock is coarse)."""
    scratch = path.with_name(path.name + ".tick")
    for _ in range(1_000_000):
        scratch.write_bytes(b"")
        if scratch.stat().st_ctime_ns > path.stat().st_ctime_ns:
            return
    raise AssertionError("the file clock did not move")


def test_a_settled_share_is_served_without_hashing_again(
    store: ShareStore, tmp_path: Path, hashed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(3 * CHUNK)
    path.write_bytes(data)
    settle(monkeypatch)
    cid = share(store, path)
    assert all_chunks(store, cid) == data
    assert hashed == []


def test_a_file_changed_just_before_sharing_is_hashed_on_every_read(
    store: ShareStore, tmp_path: Path, hashed: list[int]
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(2 * CHUNK))
    cid = share(store, path)
    all_chunks(store, cid)
    all_chunks(store, cid)
    assert len(hashed) == 4


def test_a_chunk_hashed_once_settled_is_not_hashed_again(
    store: ShareStore, tmp_path: Path, hashed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(2 * CHUNK))
    cid = share(store, path)
    settle(monkeypatch)
    store.read_chunk(cid, 1)
    store.read_chunk(cid, 1)
    store.read_chunk(cid, 0)
    assert len(hashed) == 2


def test_an_edit_after_settling_is_caught_even_with_its_mtime_restored(
    store: ShareStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * CHUNK)
    before = path.stat()
    settle(monkeypatch)
    cid = share(store, path)
    store.read_chunk(cid, 0)
    wait_for_next_ctime(path)
    with path.open("r+b") as f:
        f.write(b"b")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(StaleShareError, match="no longer holds"):
        store.read_chunk(cid, 0)


def test_a_file_replaced_by_a_copy_with_the_same_mtime_is_hashed_again(
    store: ShareStore, tmp_path: Path, hashed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(CHUNK)
    path.write_bytes(data)
    before = path.stat()
    settle(monkeypatch)
    cid = share(store, path)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(data)
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    copy.replace(path)
    assert store.read_chunk(cid, 0) == data
    assert len(hashed) == 1


def test_truncated_or_deleted_file_marks_the_share_stale(store: ShareStore, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * CHUNK)
    cid = share(store, path)
    path.unlink()
    with pytest.raises(StaleShareError, match="cannot be opened"):
        store.read_chunk(cid, 0)


def test_paged_manifest_chunks_verify_through_their_page(store: ShareStore, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom((INLINE_MAX_CHUNKS + 3) * CHUNK)
    path.write_bytes(data)
    cid = share(store, path)
    manifest = store.signed_manifest(cid).manifest
    assert manifest.paged
    last = manifest.total_chunks - 1
    assert store.read_chunk(cid, last) == data[last * CHUNK :]
    assert store.read_chunk(cid, 0) == data[:CHUNK]


def test_pins_protect_stored_content_from_gc(store: ShareStore, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"snapshot")
    in_place = tmp_path / "other.bin"
    in_place.write_bytes(b"in place")
    cid = share(store, path, copy=True)
    kept = share(store, in_place)
    row = store.catalog.share(cid)
    assert row is not None
    assert row.stored
    assert row.pinned
    path.write_bytes(b"edited after sharing")
    assert store.read_chunk(cid, 0) == b"snapshot"
    assert store.gc().removed == ()
    store.set_pinned(cid, pinned=False)
    report = store.gc()
    assert report.removed == (cid,)
    assert report.freed_bytes == len(b"snapshot")
    assert not (tmp_path / "content").joinpath(row.root).exists()
    assert not list((tmp_path / "content").iterdir())
    assert [r.cid for r in store.catalog.shares()] == [kept]
    assert in_place.exists()


def test_gc_keeps_up_to_the_quota_removing_oldest_first(store: ShareStore, tmp_path: Path) -> None:
    cids = []
    for index in range(3):
        path = tmp_path / f"f{index}"
        path.write_bytes(bytes([index]) * 100)
        cid = share(store, path, copy=True)
        store.set_pinned(cid, pinned=False)
        cids.append(cid)
    assert store.gc(keep_bytes=150).removed == tuple(cids[:2])


def job_output(store: ShareStore, tmp_path: Path, index: int, keep_until: int) -> str:
    path = tmp_path / f"job-{index}.out"
    path.write_bytes(bytes([index]) * 100)
    prepared = store.prepare(path, copy=True, name=path.name)
    return store.commit_job_output(prepared, "requester", keep_until).cid


def test_job_outputs_are_unpinned_stored_content_under_the_quota(
    store: ShareStore, tmp_path: Path
) -> None:
    cid = job_output(store, tmp_path, 1, keep_until=1000)
    row = store.catalog.share(cid)
    assert row is not None
    assert (row.stored, row.pinned) == (True, False)
    assert store.stored_bytes() == 100
    assert store.catalog.job_output_requesters(cid) == {"requester"}


def test_gc_keeps_a_job_output_its_requester_has_not_fetched_until_it_expires(
    store: ShareStore, tmp_path: Path
) -> None:
    waiting = job_output(store, tmp_path, 1, keep_until=1000)
    fetched = job_output(store, tmp_path, 2, keep_until=1000)
    store.catalog.set_job_output_fetched(fetched, "requester")
    assert store.gc(now=999).removed == (fetched,)
    assert store.gc(now=999).removed == ()
    assert store.gc(now=1000).removed == (waiting,)
    assert not list((tmp_path / "content").iterdir())
    assert store.catalog.job_outputs() == {}


def test_the_job_output_sweep_removes_only_fetched_or_expired_outputs(
    store: ShareStore, tmp_path: Path
) -> None:
    path = tmp_path / "mine"
    path.write_bytes(b"the user's own snapshot")
    mine = share(store, path, copy=True)
    store.set_pinned(mine, pinned=False)
    waiting = job_output(store, tmp_path, 1, keep_until=1000)
    expired = job_output(store, tmp_path, 2, keep_until=10)
    assert store.gc_job_outputs(now=500).removed == (expired,)
    assert {r.cid for r in store.catalog.shares()} == {mine, waiting}


def test_unknown_cid_and_unshare(store: ShareStore, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    cid = share(store, path)
    store.remove(cid)
    with pytest.raises(UnknownShareError):
        store.read_chunk(cid, 0)
    with pytest.raises(UnknownShareError):
        store.remove(cid)


@pytest.mark.parametrize("kind", ["missing", "fifo"])
def test_unshareable_paths_are_refused_clearly(
    store: ShareStore, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(UserError, match=f"cannot share {path}"):
        store.prepare(path)


def test_case_folded_duplicates_are_refused(store: ShareStore, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Readme").write_bytes(b"1")
    (tree / "README").write_bytes(b"2")
    with pytest.raises(UserError, match="cannot share"):
        store.prepare(tree)


def test_catalog_is_wal_private_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    assert catalog.schema_version == len(MIGRATIONS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = DownloadRow("bafk", "/tmp/out", b"manifest", b"\x0f\x00", DownloadState.RUNNING, 1)
    catalog.save_download(row)
    catalog.save_download(
        DownloadRow("bafk", "/tmp/out", b"manifest", b"\xff\x01", DownloadState.RUNNING, 2)
    )
    saved = catalog.download("bafk")
    assert saved is not None
    assert saved.verified == b"\xff\x01"
    catalog.close()
    assert Catalog(path).schema_version == len(MIGRATIONS)


def test_corrupt_catalog_gives_the_recovery_sentence(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="move the file away"):
        Catalog(path)


def test_catalog_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="newer p2pshare"):
        Catalog(path)


def test_a_version_1_catalog_is_migrated_keeping_its_shares(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO shares VALUES ('bafk1', 'file', NULL, '/x', 0, x'00', 1, 1, 0, NULL, 1)"
        )
    catalog = Catalog(path)
    assert catalog.schema_version == len(MIGRATIONS)
    assert [row.cid for row in catalog.shares()] == ["bafk1"]
    assert catalog.shares()[0].origin is None, "old shares have no recorded origin"
    assert catalog.shares()[0].skipped == ()
    catalog.set_provided("bafk1", ProvideStatus(10, 3))
    catalog.set_provided("unknown", ProvideStatus(10, 3))
    assert catalog.provide_status() == {"bafk1": ProvideStatus(10, 3)}
    catalog.remove_share("bafk1")
    assert catalog.provide_status() == {}
    catalog.close()


def test_known_peers_keep_the_newest(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.save_peers([KnownPeer(f"p{i}", (f"/ip4/127.0.0.1/tcp/{i}",), i) for i in range(5)], 3)
    assert [p.peer_id for p in catalog.known_peers()] == ["p4", "p3", "p2"]
    catalog.save_peers([KnownPeer("p2", ("/ip4/127.0.0.1/tcp/9",), 9)], 3)
    assert catalog.known_peers()[0] == KnownPeer("p2", ("/ip4/127.0.0.1/tcp/9",), 9)
    catalog.close()
