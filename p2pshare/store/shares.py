"""Shares: publishing local files, serving their chunks verified, pins and gc.

A share is served from the user's own files in place.  Before a chunk leaves
the node it is re-read and checked: a file whose size or mtime changed, or whose
bytes no longer match the signed manifest, marks the share stale and nothing of it
is served again until it is shared anew.  A chunk is hashed again unless it was
hashed since its file last changed (p2pshare.store.checked).

``share --copy`` keeps a snapshot in the home's ``content/`` directory instead
(pinned); unpinned stored content is what ``gc`` and the quota reclaim.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from p2pshare.errors import IntegrityError, UserError, WouldBlockError
from p2pshare.proto.chunks import chunk_count, verify_chunk
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import (
    BuiltManifest,
    Manifest,
    ShareKind,
    build_manifest,
    expected_chunk_hash,
    verify_page,
)
from p2pshare.proto.pages import HashPage, page_for_chunk
from p2pshare.proto.sealed import OpenedShare, open_envelope
from p2pshare.proto.signed_manifest import SignedManifest, decode_signed_manifest, sign_manifest
from p2pshare.store.catalog import Catalog, FileStamp, PrivateShare, ShareRow
from p2pshare.store.checked import CheckedChunks, FileIdentity
from p2pshare.store.guard import check_no_private_keys
from p2pshare.store.pread import read_at
from p2pshare.store.private import recipient_keys, seal_scan, sealed_bytes
from p2pshare.store.scanner import HashedFile, Scan, hash_file, scan
from p2pshare.store.staging import Staging, copy_checked, free_bytes, private_dirs

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.identity import NodeKey
    from p2pshare.store.guard import HomeGuard


class StaleShareError(UserError):
    """A shared file changed on disk; its old content can no longer be served."""


class UnknownShareError(UserError):
    """No share with this content ID is in the catalog."""


@dataclass(frozen=True)
class PreparedShare:
    """A hashed and signed share, ready to be recorded (built off the event loop)."""

    signed: SignedManifest
    pages: tuple[bytes, ...]
    scan: Scan
    stored: bool
    hashed: tuple[HashedFile, ...]
    origin: Path
    # Set for a private share: its recipients (the sharer included) and serving policy.
    private: PrivateShare | None = None


@dataclass(frozen=True)
class GcReport:
    removed: tuple[str, ...]
    freed_bytes: int
    # Stored content gc kept because it is pinned (share --copy, share --to, seed, pin).
    pinned: int = 0
    pinned_bytes: int = 0


class ShareStore:
    """The node's shares, backed by the catalog and the files it names."""

    def __init__(
        self,
        catalog: Catalog,
        content_dir: Path,
        key: NodeKey,
        chunk_size: int,
        guard: HomeGuard | None = None,
        free_space: Callable[[Path], int] = free_bytes,
    ) -> None:
        """``free_space`` tells the bytes free in a directory (tests fake a small disk)."""
        self.catalog = catalog
        # The daemon always passes its home's guard; without one nothing is refused.
        self.guard = guard
        self._content_dir = content_dir
        self._key = key
        self._chunk_size = chunk_size
        self._manifests: dict[str, SignedManifest] = {}
        self._pages: dict[tuple[str, int], HashPage] = {}
        # What serving a chunk needs from the catalog, kept off SQLite's path per chunk;
        # every catalog write about a share goes through this class and drops its entry.
        self._serving: dict[str, tuple[ShareRow, list[FileStamp]]] = {}
        self._checked = CheckedChunks()
        self.staging = Staging(content_dir, free_space)

    # -- publishing (prepare runs in a worker thread: it reads and hashes files)

    def prepare(
        self,
        path: Path,
        *,
        name: str | None = None,
        copy: bool = False,
        progress: Callable[[int, int], None] = lambda _done, _total: None,
        confirmed: bool = False,
        ours: bool = False,
    ) -> PreparedShare:
        """Scan, (copy,) hash, build and sign; touches no catalog state.

        ``confirmed``: the user said (``--yes``) that files looking like private keys
        are meant to be published.  ``ours``: the files are this node's own, written
        and closed in its home (see copy_checked)."""
        found = self._scan(path, name, confirmed)
        if not copy:
            hashed, built = self._hash_and_build(found, name, None, progress)
            signed = sign_manifest(built.manifest, self._key)
            return PreparedShare(
                signed, built.pages, found, stored=False, hashed=hashed, origin=found.root
            )
        with self.staging.new(found.root, found.total_size) as staged:
            snapshot = self._snapshot(found, staged, ours=ours)
            hashed, built = self._hash_and_build(snapshot, name, None, progress)
            signed = sign_manifest(built.manifest, self._key)
            snapshot = self._settle_snapshot(snapshot, signed.cid)
        return PreparedShare(
            signed, built.pages, snapshot, stored=True, hashed=hashed, origin=found.root
        )

    def prepare_private(
        self,
        path: Path,
        recipients: list[str],
        *,
        anyone_may_seed: bool = False,
        name: str | None = None,
        progress: Callable[[int, int], None] = lambda _done, _total: None,
        confirmed: bool = False,
    ) -> PreparedShare:
        """Scan, seal for ``recipients`` (peer IDs) into the store, hash and sign the ciphertext."""
        keys = recipient_keys(recipients, self._key.peer_id)
        found = self._scan(path, name, confirmed)
        with self.staging.new(found.root, sealed_bytes(found, self._chunk_size)) as staged:
            sealed = seal_scan(found, keys, self._chunk_size, staged / "tree", name)
            # created 0: the ciphertext is new each time anyway, and the time tells
            # observers nothing.
            hashed, built = self._hash_and_build(sealed.scan, None, sealed.envelope, progress, 0)
            signed = sign_manifest(built.manifest, self._key)
            settled = self._settle_snapshot(sealed.scan, signed.cid)
        prepared = PreparedShare(
            signed, built.pages, settled, stored=True, hashed=hashed, origin=found.root
        )
        return replace(prepared, private=PrivateShare(tuple(keys), anyone_may_seed))

    def _scan(self, path: Path, name: str | None, confirmed: bool) -> Scan:
        found = scan(path, self._chunk_size, name, self.guard)
        if self.guard is not None and not confirmed:
            check_no_private_keys(path, (f.abs_path for f in found.files))
        return found

    def _hash_and_build(
        self,
        found: Scan,
        name: str | None,
        sealed: bytes | None,
        progress: Callable[[int, int], None],
        created: int | None = None,
    ) -> tuple[tuple[HashedFile, ...], BuiltManifest]:
        total = found.total_size
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress(done, total)

        hashed = tuple(hash_file(f, self._chunk_size, advance) for f in found.files)
        entries = [h.entry for h in hashed]
        if created is None:
            # The newest mtime, not the wall clock: sharing unchanged files again yields
            # the same manifest bytes and so the same content ID.
            created = max((f.mtime_ns // 1_000_000_000 for f in found.files), default=0)
        built = build_manifest(
            entries,
            kind=found.kind,
            publisher=self._key.public_key,
            created=created,
            chunk_size=self._chunk_size,
            name=name,
            directories=found.empty_dirs,
            sealed=sealed,
        )
        return hashed, built

    @staticmethod
    def _snapshot(found: Scan, staged: Path, *, ours: bool = False) -> Scan:
        """Copy the scanned files into ``staged``, each checked unchanged while copied."""
        root = staged / found.root.name if found.kind is ShareKind.FILE else staged / "tree"
        copied = []
        for f in found.files:
            target = root if found.kind is ShareKind.FILE else root / f.rel_path
            private_dirs(staged, target.parent)
            copy_checked(f, target, ours=ours)
            copied.append(replace(f, abs_path=target))
        if found.kind is ShareKind.DIRECTORY:
            private_dirs(staged, root)
        return replace(found, root=root, files=tuple(copied))

    def _settle_snapshot(self, found: Scan, cid: ContentId) -> Scan:
        staging = found.root.parent
        final = self._content_dir / cid.digest.hex()
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
        root = final / found.root.name
        files = tuple(
            replace(f, abs_path=root if found.kind is ShareKind.FILE else root / f.rel_path)
            for f in found.files
        )
        return replace(found, root=root, files=files)

    def commit(self, prepared: PreparedShare) -> ShareRow:
        """Record a prepared share; sharing the same content again keeps its pin."""
        cid = str(prepared.signed.cid)
        existing = self.catalog.share(cid)
        if existing is not None and existing.stored and not existing.stale_reason:
            # The node already keeps its own copy of exactly this content; serving
            # that copy is safer than switching to files the user may edit.
            return existing
        manifest = prepared.signed.manifest
        row = ShareRow(
            cid=cid,
            kind=manifest.kind.value,
            name=manifest.name,
            root=str(prepared.scan.root),
            stored=prepared.stored,
            signed_manifest=prepared.signed.data,
            total_size=manifest.total_size,
            file_count=len(manifest.entries),
            pinned=prepared.stored or (existing.pinned if existing else False),
            stale_reason=None,
            added_at=existing.added_at if existing else time.time_ns(),
            origin=str(prepared.origin) if prepared.stored else None,
            skipped=prepared.scan.skipped,
        )
        by_path = {f.rel_path: f for f in prepared.scan.files}
        stamps = [
            FileStamp(index, entry.size, by_path[entry.path].mtime_ns)
            for index, entry in enumerate(manifest.entries)
        ]
        self.catalog.add_share(row, stamps, prepared.pages)
        if prepared.private is not None:
            self.catalog.add_private_share(cid, prepared.private)
        self._forget(cid)
        self._manifests[cid] = prepared.signed
        hashed = {h.entry.path: h for h in prepared.hashed}
        for index, entry in enumerate(manifest.entries):
            file = hashed[entry.path]
            self._checked.record_file(
                cid,
                index,
                file.identity,
                chunk_count(entry.size, manifest.chunk_size),
                read_at_ns=file.read_at_ns,
            )
        return row

    def adopt(
        self, signed: SignedManifest, pages: tuple[bytes, ...], root: Path, *, stored: bool = False
    ) -> ShareRow:
        """Record a completed download at ``root`` as a share served in place.

        ``stored``: ``root`` is :meth:`private_root`, a copy the home keeps (unpinned).
        """
        manifest = signed.manifest
        stamps = []
        for index, entry in enumerate(manifest.entries):
            path = root if manifest.kind is ShareKind.FILE else root / entry.path
            st = path.stat()
            stamps.append(FileStamp(index, st.st_size, st.st_mtime_ns))
        existing = self.catalog.share(str(signed.cid))
        if existing is not None and not existing.stale_reason:
            return existing
        row = ShareRow(
            cid=str(signed.cid),
            kind=manifest.kind.value,
            name=manifest.name,
            root=str(root),
            stored=stored,
            signed_manifest=signed.data,
            total_size=manifest.total_size,
            file_count=len(manifest.entries),
            pinned=False,
            stale_reason=None,
            added_at=time.time_ns(),
        )
        self.catalog.add_share(row, stamps, pages)
        self._forget(row.cid)
        return row

    # -- private shares (docs/store.md, "Private shares")

    def private_root(self, cid: ContentId) -> Path:
        """Where this node keeps a private share's ciphertext: as a stored share's tree."""
        return self._content_dir / cid.digest.hex() / "tree"

    def open_private(self, signed: SignedManifest) -> OpenedShare:
        """The content key and file list of a private share; NotARecipientError if not ours."""
        manifest = signed.manifest
        assert manifest.sealed is not None
        sizes = [entry.size for entry in manifest.entries]
        return open_envelope(manifest.sealed, self._key.seed, sizes, manifest.chunk_size)

    # -- serving

    def signed_manifest(self, cid: str) -> SignedManifest:
        cached = self._manifests.get(cid)
        if cached is not None:
            return cached
        row = self._require(cid)
        signed = decode_signed_manifest(row.signed_manifest, ContentId.parse(cid))
        self._manifests[cid] = signed
        return signed

    def read_chunk(self, cid: str, global_index: int) -> bytes:
        """The verified bytes of one chunk, read from the shared files now."""
        out = bytearray(self.signed_manifest(cid).manifest.chunk_size)
        return bytes(memoryview(out)[: self.read_chunk_into(cid, global_index, out)])

    def read_chunk_into(
        self, cid: str, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        """Read one chunk, verified, from the shared files now into ``out`` (at least
        a chunk long); its length.  Allocates nothing the size of a chunk: the
        uploader lends the buffer.  ``wait=False``: raise WouldBlockError unless the
        chunk is in the page cache and needs no hashing, so the event loop can serve
        it at once and only the rest goes to a worker thread."""
        row, stamps = self._serving_info(cid)
        if row.stale_reason:
            raise StaleShareError(f"share {cid} is stale: {row.stale_reason}")
        manifest = self.signed_manifest(cid).manifest
        location = manifest.locate_chunk(global_index)
        stamp = stamps[location.entry_index]
        path = Path(row.root)
        if manifest.kind is ShareKind.DIRECTORY:
            path = path / location.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise self._stale(cid, f"{path} cannot be opened ({exc.strerror})") from None
        try:
            before = os.fstat(fd)
            if self.guard is not None and not self.guard.may_serve(fd, path, before):
                raise self._stale(cid, f"{path} is in the node home or is its key: never served")
            if before.st_size != stamp.size or before.st_mtime_ns != stamp.mtime_ns:
                raise self._stale(cid, f"{path} changed on disk since it was shared")
            read_at_ns = time.time_ns()
            data = memoryview(out)[: location.length]
            if read_at(fd, data, location.offset, wait=wait) != location.length:
                raise self._stale(cid, f"{path} changed on disk since it was shared")
            # Checked after the read: an edit during it changes the identity.
            after = FileIdentity.of(os.fstat(fd))
        finally:
            os.close(fd)
        entry, chunk = location.entry_index, location.chunk_index
        if self._checked.trusted(cid, entry, after, chunk):
            return location.length
        if not wait:
            raise WouldBlockError("the chunk must be hashed first")
        page = self._page(cid, manifest, global_index) if manifest.paged else None
        try:
            verify_chunk(expected_chunk_hash(manifest, global_index, page), data)
        except IntegrityError:
            raise self._stale(cid, f"{path} no longer holds the shared bytes") from None
        if FileIdentity.of(before) == after:
            count = chunk_count(manifest.entries[entry].size, manifest.chunk_size)
            self._checked.record(cid, entry, after, chunk, count, read_at_ns=read_at_ns)
        return location.length

    # -- checking shares cheaply, for ls, status and reprovide

    def share_files(self, row: ShareRow) -> ShareFiles:
        """What :func:`changed_file` needs to check a share, from memory and the catalog."""
        manifest = self.signed_manifest(row.cid).manifest
        paths = None if manifest.kind is ShareKind.FILE else [e.path for e in manifest.entries]
        return ShareFiles(row.root, paths, self.catalog.stamps(row.cid))

    def mark_stale(self, cid: str, reason: str) -> None:
        self._stale(cid, reason)

    def _serving_info(self, cid: str) -> tuple[ShareRow, list[FileStamp]]:
        cached = self._serving.get(cid)
        if cached is None:
            cached = (self._require(cid), self.catalog.stamps(cid))
            self._serving[cid] = cached
        return cached

    def _page(self, cid: str, manifest: Manifest, global_index: int) -> HashPage:
        page_index, _slot = page_for_chunk(global_index)
        cached = self._pages.get((cid, page_index))
        if cached is None:
            data = self.catalog.page(cid, page_index)
            if data is None:
                raise self._stale(cid, f"hash page {page_index} is missing from the catalog")
            cached = verify_page(manifest, page_index, data)
            self._pages[(cid, page_index)] = cached
        return cached

    def _stale(self, cid: str, reason: str) -> StaleShareError:
        self.catalog.mark_stale(cid, reason)
        self._serving.pop(cid, None)
        return StaleShareError(f"share {cid} is stale: {reason}; share the files again")

    def _require(self, cid: str) -> ShareRow:
        row = self.catalog.share(cid)
        if row is None:
            raise UnknownShareError(f"no share with content ID {cid} on this node")
        return row

    # -- managing

    def remove(self, cid: str, *, revoke: bool = False) -> ShareRow:
        """Stop sharing ``cid``; ``revoke``: and never serve it again, whoever asks.

        Revoking changes nothing already delivered: a recipient keeps its copy and its key.
        """
        row = self._require(cid)
        if revoke:
            self.catalog.revoke(cid)
        self.catalog.remove_share(cid)
        self._forget(cid)
        if row.stored:
            shutil.rmtree(self._content_dir / ContentId.parse(cid).digest.hex(), ignore_errors=True)
        return row

    def set_pinned(self, cid: str, *, pinned: bool) -> ShareRow:
        self._require(cid)
        self.catalog.set_pinned(cid, pinned=pinned)
        self._serving.pop(cid, None)
        return self._require(cid)

    def stored_bytes(self) -> int:
        return sum(r.total_size for r in self.catalog.shares() if r.stored)

    def pinned_bytes(self) -> int:
        """Stored content gc may not remove: what the quota cannot make room in."""
        return sum(r.total_size for r in self.catalog.shares() if r.stored and r.pinned)

    def commit_job_output(
        self, prepared: PreparedShare, requester: str, keep_until: int
    ) -> ShareRow:
        """Record a compute job's stored stdout: unpinned, and served only to ``requester``."""
        row = self.commit(prepared)
        self.catalog.add_job_output(row.cid, requester, keep_until)
        if row.pinned:
            self.catalog.set_pinned(row.cid, pinned=False)
            self._serving.pop(row.cid, None)
        return self._require(row.cid)

    def gc(self, keep_bytes: int = 0, now: float | None = None) -> GcReport:
        """Delete unpinned stored content, oldest first, until at most ``keep_bytes`` remain.

        Shares served in place from the user's files are never deleted, nor is pinned
        content, nor a job output its requester may still fetch (not fetched and before
        its keep_until).  What shares that did not finish left behind goes too
        (p2pshare.store.staging).
        """
        now = time.time() if now is None else now
        outputs = self.catalog.job_outputs()
        rows = [row for row in self.catalog.shares() if row.stored]
        stored = sum(row.total_size for row in rows)
        removed: list[str] = []
        freed = 0
        for row in rows:
            if stored - freed <= keep_bytes:
                break
            output = outputs.get(row.cid)
            if output is not None and output.keep_until > now:
                continue
            if not row.pinned:
                self.remove(row.cid)
                removed.append(row.cid)
                freed += row.total_size
        pinned = [row.total_size for row in rows if row.pinned]
        leftovers = self.staging.sweep()
        return GcReport(tuple(removed), freed + leftovers, len(pinned), sum(pinned))

    def gc_job_outputs(self, now: float | None = None) -> GcReport:
        """Delete every job output fetched by its requesters or past its keep_until."""
        now = time.time() if now is None else now
        removed: list[str] = []
        freed = 0
        for cid, output in self.catalog.job_outputs().items():
            row = self.catalog.share(cid)
            if output.keep_until <= now and row is not None and not row.pinned:
                self.remove(cid)
                removed.append(cid)
                freed += row.total_size
        return GcReport(tuple(removed), freed)

    def _forget(self, cid: str) -> None:
        self._manifests.pop(cid, None)
        self._serving.pop(cid, None)
        self._checked.forget(cid)
        for key in [k for k in self._pages if k[0] == cid]:
            del self._pages[key]


@dataclass(frozen=True)
class ShareFiles:
    """A share's files as the catalog recorded them when it was shared."""

    root: str
    paths: list[str] | None  # each manifest entry's path; None: the root is the one file
    stamps: list[FileStamp]


def changed_file(files: ShareFiles) -> str | None:
    """Why a share is stale, judged by ``lstat`` alone as serving would; None if it looks fine.

    Only sizes and mtimes are compared, never bytes: cheap enough for every ``ls`` (it
    runs in a worker thread, so paths are joined here too, off the event loop).  A
    change that keeps both is still caught when a chunk is served.
    """
    for stamp in files.stamps:
        path = (
            files.root
            if files.paths is None
            else os.path.join(files.root, files.paths[stamp.entry_index])  # noqa: PTH118
        )
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{path} cannot be opened ({exc.strerror})"
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size != stamp.size
            or st.st_mtime_ns != stamp.mtime_ns
        ):
            return f"{path} changed on disk since it was shared"
    return None
