"""One download: providers -> verified manifest -> chunks from every peer -> the file.

The async shell around :class:`~p2pshare.transfer.picker.Picker` (who is asked
for what), :class:`~p2pshare.transfer.peer.PeerLink` (one pipelined stream per
provider) and :class:`~p2pshare.transfer.output.PartialOutput` (where verified
chunks land).  Every chunk is checked against the signed manifest before it is
written; a provider that sends one bad chunk is banned for this download and its
chunks go to the others.  Progress is recorded in the catalog only after the
chunks it names are on disk (fsync first), so after a crash the download resumes
without fetching any verified chunk twice.

Providers come and go while it runs: one whose stream breaks is dialed again after
a short backoff, the provider lookup runs again every ``LOOKUP_INTERVAL`` (and at
once when no link is left) so downloaders that announce their partial content are
found, and a partial provider's chunk list is asked again when we have nothing left
to ask it for.  A download fails only once no provider that could send a missing
chunk has been left, or found, for ``CONNECT_TIMEOUT``.

The event loop only receives (and, on a data channel, decrypts): every chunk that
arrives goes to one storing task, which hashes and writes whole batches of them in
one worker-thread call.  BLAKE3 and ``pwrite`` release the GIL, so that work runs
on another core meanwhile, and the thread hand-off is paid once per batch.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from p2pshare.errors import IntegrityError, RemoteError, UserError
from p2pshare.metrics import METRICS
from p2pshare.modes import PRIVATE_UMASK
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import hash_chunk
from p2pshare.proto.manifest import expected_chunk_hash, verify_page
from p2pshare.proto.pages import HashPage, page_for_chunk
from p2pshare.proto.signed_manifest import SignedManifest, decode_signed_manifest
from p2pshare.proto.transfer import (
    MAX_CHUNKS_PER_REQUEST,
    NotAvailableError,
    UnknownContentError,
)
from p2pshare.store.catalog import DownloadRow
from p2pshare.transfer import failures
from p2pshare.transfer.blocking import RunBlocking, run_in_thread
from p2pshare.transfer.destination import check_destination, check_space, free_bytes
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.output import PartialOutput
from p2pshare.transfer.peer import PeerLink
from p2pshare.transfer.picker import Picker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.chunks import BytesLike
    from p2pshare.proto.cid import ContentId
    from p2pshare.transfer.source import LocalContent

log = logging.getLogger(__name__)
PIPELINE = 4
# A provider that sends nothing at all for this long is dropped.
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 15.0
# Delays before dialing a provider again after its stream broke or stalled, one per
# failure in a row: an overloaded seeder gets time to recover, and a peer that is
# gone costs a few dials.  A stream that then brings a verified chunk starts over.
REATTACH_DELAYS = (1.0, 4.0, 10.0)
# Downloaders announce their partial content as they go: a running download asks the
# lookup again this often, so load spreads over them instead of staying on the seeder.
LOOKUP_INTERVAL = 15.0
# Providers linked, being dialed or waiting to be dialed again, at most.
MAX_PROVIDERS = 32
# A partial provider verifies more chunks as it downloads: its chunk list is asked
# again this often, while we have nothing in flight with it (one small request).
HAVE_REFRESH_S = 5.0
# A discarded stream gets this long to close before it is left to the peer.
CLOSE_TIMEOUT = 5.0
PERSIST_EVERY_CHUNKS = 32
PERSIST_EVERY_S = 1.0
PROGRESS_EVERY_S = 0.25
# Requests span about 4 MiB whatever the chunk size (within the protocol's 64 chunks):
# fewer round trips per byte, and small chunks do not mean many tiny requests.
REQUEST_BYTES = 4 << 20
# Chunks received and not yet stored (about 16 MiB, at most 64 chunks since a small
# chunk may keep a whole received buffer alive), and the most one worker-thread call
# hashes and writes: bounds the memory a fast link can fill while the disk lags.
STORE_QUEUE_BYTES = 16 << 20
STORE_QUEUE_CHUNKS = 64
STORE_BATCH_BYTES = 8 << 20


class DownloadRecords(Protocol):
    """Where a download keeps its verified-chunk record (the catalog, for ``get``)."""

    def download(self, cid: str) -> DownloadRow | None: ...

    def save_download(self, row: DownloadRow) -> None: ...


class MemoryRecords:
    """Records that last as long as the download: for content the node fetches for
    itself (a compute job's), which is never resumed and must not touch a ``get``'s."""

    def __init__(self) -> None:
        self._rows: dict[str, DownloadRow] = {}

    def download(self, cid: str) -> DownloadRow | None:
        return self._rows.get(cid)

    def save_download(self, row: DownloadRow) -> None:
        self._rows[row.cid] = row


@dataclass(frozen=True)
class Source:
    """A provider to download from."""

    peer_id: str
    addrs: tuple[str, ...] = ()


@dataclass
class DownloadReport:
    cid: str
    destination: str
    size: int
    files: int
    chunks: int
    resumed_chunks: int = 0
    requested_bytes: int = 0
    received_bytes: int = 0
    elapsed_s: float = 0.0
    peers: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    chunks_from: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "destination": self.destination,
            "size": self.size,
            "files": self.files,
            "chunks": self.chunks,
            "resumed_chunks": self.resumed_chunks,
            "requested_bytes": self.requested_bytes,
            "received_bytes": self.received_bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "peers": self.peers,
            "banned": self.banned,
            "chunks_from": self.chunks_from,
        }


@dataclass(frozen=True)
class _Arrival:
    """A chunk as received, not yet checked."""

    peer: str
    index: int
    expected: bytes
    payload: BytesLike


def _check_and_write(output: PartialOutput, batch: list[_Arrival]) -> list[bool]:
    """For each chunk: does it match its hash?  Only those that do are written.

    Runs in a worker thread; the caller marks a chunk verified only after this
    returned, so nothing is recorded before it is on its way to disk.
    """
    good = []
    for arrival in batch:
        ok = hash_chunk(arrival.payload) == arrival.expected
        METRICS.chunk_checked(ok=ok)
        if ok:
            output.write_chunk(arrival.index, arrival.payload)
        good.append(ok)
    return good


class _Partial:
    """A running download as the uploader sees it: only verified chunks."""

    def __init__(self, job: Download) -> None:
        self._job = job

    @property
    def signed_manifest(self) -> bytes:
        assert self._job.signed is not None
        return self._job.signed.data

    def page(self, page_index: int) -> bytes | None:
        page = self._job.pages.get(page_index)
        return None if page is None else page.hashes

    def has_chunk(self, global_index: int) -> bool:
        return self._job.durable is not None and self._job.durable[global_index]

    def have(self, first_chunk: int, count: int) -> Bitfield:
        # ``durable`` is replaced at each persist, never changed in place, so this
        # worker-thread read sees one consistent snapshot.
        durable = self._job.durable
        assert durable is not None
        return durable.slice(first_chunk, count)

    def read_chunk(self, global_index: int) -> bytes:
        assert self._job.output is not None
        return self._job.output.read_chunk(global_index)


class Download:
    """Fetch ``cid`` into ``dest``; construct, then ``await run()`` once."""

    def __init__(
        self,
        *,
        cid: ContentId,
        dest: Path,
        force: bool,
        catalog: DownloadRecords,
        local: LocalContent,
        open_stream: Callable[[Source], Awaitable[ByteStream]],
        find_sources: Callable[[], Awaitable[list[Source]]],
        hints: list[Source],
        progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        pipeline: int = PIPELINE,
        announce: Callable[[], None] | None = None,
        umask: int = PRIVATE_UMASK,
        free_space: Callable[[Path], int] = free_bytes,
        run_blocking: RunBlocking = run_in_thread,
    ) -> None:
        """``announce`` is called once, when the first verified chunks are on disk and
        served to other peers (``get`` announces the content in the DHT then).
        ``umask`` sets the final modes of what is written (p2pshare.modes).
        ``free_space`` tells the bytes free in a directory (tests fake a small disk).
        ``run_blocking`` runs hashing, writing and fsync off the event loop."""
        self.cid = cid
        self.dest = dest
        self._force = force
        self._catalog = catalog
        self._local = local
        self._open_stream = open_stream
        self._find_sources = find_sources
        self._hints = hints
        self._progress = progress
        self._pipeline = pipeline
        self._announce = announce
        self._run_blocking = run_blocking
        self._announced = False
        self._umask = umask
        self._free_space = free_space
        self.signed: SignedManifest | None = None
        self.pages: dict[int, HashPage] = {}
        self.output: PartialOutput | None = None
        self.durable: Bitfield | None = None
        self._links: dict[str, PeerLink] = {}
        self._waiting: dict[str, set[trio.CancelScope]] = {}
        self._pipelines: dict[str, trio.CancelScope] = {}
        self._picker: Picker | None = None
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._workers: trio.Nursery | None = None
        # Every provider seen, with the addresses it was last seen with.
        self._sources: dict[str, Source] = {}
        # Providers with a task of their own: linked, being dialed or waiting to be.
        self._active: set[str] = set()
        # Providers that refused the content or failed too often: never asked again.
        self._given_up: set[str] = set()
        self._lookup_now = trio.Event()
        self._looking = False
        # Whether _connect ran the first lookup (else the lookup loop runs it at once).
        self._looked_up = False
        # Providers asked for the manifest that did not send it: not asked again.
        self._no_manifest: set[str] = set()
        # Why each provider could not help, last reason first (a failures.* phrase).
        self._why: dict[str, str] = {}
        # Sized in _prepare, once the chunk size is known.
        self._arrivals_in, self._arrivals_out = trio.open_memory_channel[_Arrival](0)
        # Chunks handed to the storing task and not yet stored (checked or refused).
        self._storing = 0
        self._persist_wanted = trio.Event()
        self._unsynced = 0
        self._last_persist = 0.0
        self._persisting = False
        self._done_bytes = 0
        self.report = DownloadReport(str(cid), str(dest), 0, 0, 0)

    # -- the whole download

    async def run(self) -> DownloadReport:
        started = time.monotonic()
        check_destination(self.dest, force=self._force)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._connect()
            signed = await self._fetch_manifest()
            await self._fetch_pages()
            self._prepare(signed)
            self._local.register(self.cid, _Partial(self))
            try:
                self._announce_partial()
                await self._transfer()
            finally:
                self._local.unregister(self.cid)
                with trio.CancelScope(shield=True):
                    await self._persist()
                    for link in list(self._links.values()):
                        await link.aclose()
                if self.output is not None:
                    self.output.close()
            nursery.cancel_scope.cancel()
        self._finish()
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    async def _connect(self) -> None:
        """Dial the hinted providers (a ticket's) at once; look the others up.

        When a hinted provider answers, the lookup is left to the lookup loop, which
        runs its first round at once, in the background: a ticket `get` starts within
        a round trip even when the DHT takes seconds (unless no hinted provider sends
        the manifest: see _fetch_manifest).  Otherwise the lookup runs first.
        """
        hints = {s.peer_id: s for s in self._hints}
        if hints:
            self._sources.update(hints)
            await self._dial(list(hints.values()))
            if self._links:
                return
        await self._look_up_and_dial()

    async def _look_up_and_dial(self) -> None:
        """Look providers up, then dial them and the hinted ones; called when no link
        is left (none made yet, or none sent the manifest)."""
        sources: dict[str, Source] = {}
        for source in await self._lookup():
            sources.setdefault(source.peer_id, source)
        self._looked_up = True
        for peer in (*self._given_up, *self.report.banned, *self._no_manifest):
            sources.pop(peer, None)
        if not sources and self._why:
            raise failures.no_manifest(self.cid, self._why)
        if not sources:
            raise NoProvidersError(
                f"no providers found for {self.cid}; check that a provider is running "
                "and reachable and that the content ID has no typo (content IDs carry no "
                "checksum), or use its ticket, which does"
            )
        self._sources.update(sources)
        await self._dial(list(sources.values()))
        if not self._links:
            raise NoProvidersError(
                f"none of the {len(sources)} providers of {self.cid} could be reached; "
                "try again later"
            )

    async def _dial(self, sources: list[Source]) -> None:
        async with trio.open_nursery() as dialing:
            for source in sources[:MAX_PROVIDERS]:
                dialing.start_soon(self._attach, source)

    async def _attach(self, source: Source) -> PeerLink | None:
        """Open a stream to ``source`` and run its link; None if it cannot be reached."""
        assert self._nursery is not None
        stream = None
        # py-libp2p now and then fails a new stream's handshake on a healthy
        # connection: a second try saves the provider.
        for attempt in range(2):
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await self._open_stream(source)
                break
            except (trio.TooSlowError, UserError, RemoteError) as exc:
                log.info("provider %s unreachable (try %d): %s", source.peer_id, attempt, exc)
                await trio.sleep(0.2)
        if stream is None:
            self._why[source.peer_id] = failures.UNREACHABLE
            return None
        link = PeerLink(stream, source.peer_id, max_chunk_size=1 << 24)
        try:
            await self._nursery.start(self._run_link, link)
        except (RemoteError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The stream broke before our HELLO was out (an overloaded peer resets it).
            log.info("provider %s reset the new stream: %s", source.peer_id, exc)
            await self._close_link(link)
            return None
        except BaseException:
            await self._close_link(link)
            raise
        self._links[source.peer_id] = link
        return link

    async def _run_link(
        self, link: PeerLink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await link.run(task_status=task_status)
        except trio.BrokenResourceError:
            log.info("stream to %s broke", link.peer_id)

    def _drop(
        self, peer: str, reason: str, why: str, *, ban: bool = False, refused: bool = False
    ) -> None:
        """Stop using ``peer``'s link; a banned peer, or one that refused the content, is
        never asked again, any other may be dialed again (see ``_keep_peer``).  ``reason``
        goes to the log, ``why`` (a failures.* phrase) into the error the download may
        end with."""
        if self._why.get(peer) not in (failures.FORGED, failures.BAD_CHUNK):
            self._why[peer] = why
        # A bad chunk may be found after its sender was dropped for another reason.
        if ban and peer not in self.report.banned:
            self.report.banned.append(peer)
        if refused:
            self._given_up.add(peer)
        link = self._links.pop(peer, None)
        if link is None:
            return
        log.info("dropping provider %s: %s", peer, reason)
        pipeline = self._pipelines.pop(peer, None)
        if pipeline is not None:
            pipeline.cancel()
        if self._picker is not None:
            self._picker.remove_peer(peer)
        assert self._nursery is not None
        self._nursery.start_soon(self._close_link, link)
        if not self._links:
            self._lookup_now.set()
        self._notify()

    async def _close_link(self, link: PeerLink) -> None:
        # The stream is discarded: failing to close it cleanly changes nothing.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLOSE_TIMEOUT),
            suppress(RemoteError, trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await link.aclose()

    async def _fetch_manifest(self) -> SignedManifest:
        for peer, link in list(self._links.items()):
            self._no_manifest.add(peer)
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    data = await link.manifest(self.cid)
                self.signed = decode_signed_manifest(data, self.cid)
            except IntegrityError as exc:
                self._drop(peer, f"sent a forged manifest: {exc}", failures.FORGED, ban=True)
            except UnknownContentError as exc:
                self._drop(peer, f"does not hold it: {exc}", failures.UNSHARED, refused=True)
            except (RemoteError, trio.TooSlowError) as exc:
                self._drop(peer, f"no manifest: {exc}", failures.NO_MANIFEST)
            else:
                return self.signed
        if not self._looked_up:
            # Only hinted providers were asked, and none sent it: look for others.
            await self._look_up_and_dial()
            return await self._fetch_manifest()
        raise failures.no_manifest(self.cid, self._why)

    async def _fetch_pages(self) -> None:
        assert self.signed is not None
        manifest = self.signed.manifest
        for page_index in range(len(manifest.page_hashes)):
            while page_index not in self.pages:
                if not self._links:
                    raise NoProvidersError(f"no provider sent hash page {page_index}")
                peer, link = next(iter(self._links.items()))
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        data = await link.page(self.cid, page_index)
                    self.pages[page_index] = verify_page(manifest, page_index, data)
                except IntegrityError as exc:
                    self._drop(peer, f"sent a forged hash page: {exc}", failures.FORGED, ban=True)
                except (RemoteError, trio.TooSlowError) as exc:
                    self._drop(peer, f"no hash page: {exc}", failures.NO_MANIFEST)

    def _prepare(self, signed: SignedManifest) -> None:
        manifest = signed.manifest
        total = manifest.total_chunks
        row = self._catalog.download(str(self.cid))
        resume = (
            row is not None
            and row.state == "running"
            and row.destination == str(self.dest)
            and row.signed_manifest == signed.data
        )
        output = PartialOutput(self.dest, manifest, umask=self._umask)
        reuse = resume and output.reusable()
        verified = Bitfield(total)
        if reuse and row is not None:
            verified = Bitfield.from_bytes(row.verified, total)
        self._check_space(signed, verified)
        if resume and not reuse:
            # The record must never describe a partial made after it: reset it first.
            self._save_row("running", verified)
        output.open(resume=reuse)
        # Set once the partial is this download's: a caller removes it on failure then.
        self.output = output
        self.durable = verified.copy()
        self.report.size = manifest.total_size
        self.report.files = len(manifest.entries)
        self.report.chunks = total
        self.report.resumed_chunks = verified.count()
        self._done_bytes = sum(manifest.locate_chunk(i).length for i in verified.iter_set())
        batch = max(1, min(MAX_CHUNKS_PER_REQUEST, REQUEST_BYTES // manifest.chunk_size))
        self._picker = Picker(verified, batch=batch)
        self._arrivals_in, self._arrivals_out = trio.open_memory_channel[_Arrival](
            min(STORE_QUEUE_CHUNKS, max(1, STORE_QUEUE_BYTES // manifest.chunk_size))
        )
        self._save_row("running")

    def _check_space(self, signed: SignedManifest, verified: Bitfield) -> None:
        """Refuse, before writing, content the disk cannot hold; the chunks verified
        before (a resume) are on disk already."""
        manifest = signed.manifest
        have = sum(manifest.locate_chunk(i).length for i in verified.iter_set())
        check_space(self.cid, self.dest, manifest.total_size - have, self._free_space)

    # -- moving chunks

    async def _transfer(self) -> None:
        """Fetch every missing chunk; give up once no provider that could send one was
        left, or found, for ``CONNECT_TIMEOUT`` (and no lookup is still under way)."""
        assert self._picker is not None
        picker = self._picker
        # _connect has either just looked (a link lost since needs no second lookup
        # yet) or left the first lookup to the loop, which then runs it at once.
        self._lookup_now = trio.Event()
        if not self._looked_up:
            self._lookup_now.set()
        async with trio.open_nursery() as workers:
            self._workers = workers
            workers.start_soon(self._report_progress)
            workers.start_soon(self._store_loop)
            workers.start_soon(self._persist_loop)
            for peer, link in list(self._links.items()):
                self._keep(self._sources[peer], link)
            workers.start_soon(self._lookup_loop)
            alone_since: float | None = None
            while not picker.done:
                now = trio.current_time()
                if self._storing or self._hopeful():
                    alone_since = None
                elif alone_since is None:
                    alone_since = now
                    self._lookup_now.set()
                elif not self._looking and now - alone_since >= CONNECT_TIMEOUT:
                    break
                await self._wait_change(1.0)
            workers.cancel_scope.cancel()
        if not picker.done:
            missing = self.report.chunks - picker.verified.count()
            raise failures.stalled(self.cid, missing, self._stall_reasons())

    def _stall_reasons(self) -> dict[str, str]:
        """Why each provider seen could not send the missing chunks."""
        assert self._picker is not None
        reasons = {}
        for peer in self._sources:
            why = self._why.get(peer)
            have = self._picker.have(peer)
            if peer in self._active and have is not None:
                # Linked to the end: the last thing it said was its chunk list.
                why = why if why == failures.STALE else failures.HOLDS_NONE
            if why is not None:
                reasons[peer] = why
        return reasons

    def _hopeful(self) -> bool:
        """Whether a provider may still send a missing chunk: one being dialed, waiting to
        be dialed again or asked for its chunk list, or holding a chunk we lack.  A
        provider holding none (a seeder whose file went stale) does not keep the
        download waiting; a partial one that grows counts again once it says so."""
        assert self._picker is not None
        verified = self._picker.verified
        for peer in self._active:
            have = self._picker.have(peer)
            if have is None or have.complete or have.difference(verified).count():
                return True
        return False

    # -- providers during the transfer

    def _keep(self, source: Source, link: PeerLink | None) -> None:
        assert self._workers is not None
        self._active.add(source.peer_id)
        self._workers.start_soon(self._keep_peer, source, link)

    async def _keep_peer(self, source: Source, link: PeerLink | None) -> None:
        """Fetch from one provider until the download ends, dialing it again (after
        ``REATTACH_DELAYS``) when its stream breaks, stalls or it fails a request."""
        assert self._picker is not None
        peer = source.peer_id
        in_a_row = 0
        try:
            while True:
                if link is None:
                    link = await self._attach(self._sources.get(peer, source))
                if link is not None:
                    if peer in self.report.banned:
                        # Its last stream's bad chunk was found while this one opened.
                        self._drop(peer, "banned for a bad chunk", failures.BAD_CHUNK, ban=True)
                        return
                    served = self.report.chunks_from.get(peer, 0)
                    await self._serve_peer(peer, link)
                    link = None
                    if self.report.chunks_from.get(peer, 0) > served:
                        in_a_row = 0
                if self._picker.done or peer in self.report.banned or peer in self._given_up:
                    return
                if in_a_row == len(REATTACH_DELAYS):
                    log.info("giving up on provider %s: %d failures in a row", peer, in_a_row)
                    self._given_up.add(peer)
                    return
                await trio.sleep(REATTACH_DELAYS[in_a_row])
                in_a_row += 1
                log.info("dialing provider %s again (%d)", peer, in_a_row)
        finally:
            self._active.discard(peer)
            self._notify()

    async def _lookup_loop(self) -> None:
        """Ask for providers every ``LOOKUP_INTERVAL``, and at once when no link is left."""
        while True:
            with trio.move_on_after(LOOKUP_INTERVAL):
                await self._lookup_now.wait()
            self._lookup_now = trio.Event()
            self._looking = True
            try:
                found = await self._lookup()
            finally:
                self._looking = False
            for source in found:
                peer = source.peer_id
                if peer in self._given_up or peer in self.report.banned:
                    continue
                if peer in self._active:
                    self._sources[peer] = source
                elif len(self._active) < MAX_PROVIDERS:
                    log.info("provider %s found during the download of %s", peer, self.cid)
                    self._sources[peer] = source
                    self._keep(source, None)
            self._notify()

    async def _lookup(self) -> list[Source]:
        """The hinted providers (a ticket's provider that could not be reached at first is
        tried again), then those found now.

        The lookup is never cut short but by CONNECT_TIMEOUT: it dials peers itself,
        and a dial cancelled half way leaves py-libp2p unable to dial that peer again
        at once.  A failing lookup finds nothing; it must not end a download that runs.
        """
        found = list(self._hints)
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                found += await self._find_sources()
        except Exception:
            log.warning("provider lookup for %s failed", self.cid, exc_info=True)
        return found

    async def _serve_peer(self, peer: str, link: PeerLink) -> None:
        """Fetch from ``link`` until the download is done or the link is dropped."""
        assert self._picker is not None
        assert self.signed is not None
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                have = await link.have(self.cid, self.signed.manifest.total_chunks)
        except UnknownContentError as exc:
            self._drop(peer, f"does not hold it: {exc}", failures.UNSHARED, refused=True)
            return
        except NotAvailableError as exc:
            self._drop(peer, f"cannot serve it: {exc}", failures.STALE, refused=True)
            return
        except (RemoteError, trio.TooSlowError) as exc:
            self._drop(peer, f"no chunk list: {exc}", failures.GONE)
            return
        self._picker.add_peer(peer, have)
        if peer not in self.report.peers:
            self.report.peers.append(peer)
        self._notify()
        async with trio.open_nursery() as pipeline:
            self._pipelines[peer] = pipeline.cancel_scope
            for _ in range(self._pipeline):
                pipeline.start_soon(self._fetch_loop, peer, link, pipeline.cancel_scope)
            if not have.complete:
                pipeline.start_soon(self._refresh_have, peer, link)
        self._pipelines.pop(peer, None)

    async def _refresh_have(self, peer: str, link: PeerLink) -> None:
        """Ask a partial provider for its chunk list again while we have nothing in
        flight with it, until it holds everything."""
        assert self._picker is not None
        assert self.signed is not None
        picker, total = self._picker, self.signed.manifest.total_chunks
        while True:
            await trio.sleep(HAVE_REFRESH_S)
            have = picker.have(peer)
            if have is None or have.complete:
                return
            if picker.in_flight(peer):
                continue
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    have = await link.have(self.cid, total)
            except (RemoteError, trio.TooSlowError) as exc:
                # A partial provider that finished or stopped says so here: dialed again,
                # it may serve the whole share.
                self._drop(peer, f"no chunk list: {exc}", failures.GONE)
                return
            picker.update_have(peer, have)
            self._notify()

    async def _fetch_loop(self, peer: str, link: PeerLink, scope: trio.CancelScope) -> None:
        assert self._picker is not None
        picker = self._picker
        while not picker.done and peer in self._links:
            run = picker.next_request(peer)
            if run is None:
                await self._wait_change(1.0)
                continue
            try:
                await self._fetch_run(peer, link, run)
            except NotAvailableError as exc:
                have = picker.have(peer)
                # A seeder's copy changed on disk; a partial provider lacks them still.
                why = failures.STALE if have is not None and have.complete else failures.NOT_YET
                self._drop(peer, f"{type(exc).__name__}: {exc}", why)
            except (RemoteError, trio.TooSlowError) as exc:
                self._drop(peer, f"{type(exc).__name__}: {exc}", failures.GONE)
        scope.cancel()

    async def _fetch_run(self, peer: str, link: PeerLink, run: range) -> None:
        assert self._picker is not None
        assert self.signed is not None
        manifest = self.signed.manifest

        def length(index: int) -> int:
            return manifest.locate_chunk(index).length

        self.report.requested_bytes += sum(length(i) for i in run)
        pending = set(run)
        # A request waits behind this peer's others (and a busy seeder's other
        # downloaders): it times out only when nothing at all comes from the peer.
        waiting = trio.CancelScope(deadline=trio.current_time() + REQUEST_TIMEOUT)
        scopes = self._waiting.setdefault(peer, set())
        scopes.add(waiting)
        try:
            with waiting:
                async with aclosing(link.chunks(self.cid, run, length)) as chunks:
                    async for index, payload in chunks:
                        page = self.pages.get(page_for_chunk(index)[0]) if manifest.paged else None
                        expected = expected_chunk_hash(manifest, index, page)
                        # Counted before the await, so the download never looks
                        # finished, or out of providers, while a chunk is on its way.
                        self._storing += 1
                        try:
                            await self._arrivals_in.send(_Arrival(peer, index, expected, payload))
                        except BaseException:
                            self._storing -= 1
                            raise
                        # Still in flight for this peer until stored.
                        pending.discard(index)
                        self.report.received_bytes += len(payload)
                        alive_until = trio.current_time() + REQUEST_TIMEOUT
                        for scope in scopes:
                            scope.deadline = alive_until
            if waiting.cancelled_caught:
                raise trio.TooSlowError
        finally:
            scopes.discard(waiting)
            if peer in self._links:
                for index in pending:
                    self._picker.release(peer, index)

    async def _store_loop(self) -> None:
        """Check and write what arrives, in batches of what has queued up meanwhile."""
        async for first in self._arrivals_out:
            batch, size = [first], len(first.payload)
            while size < STORE_BATCH_BYTES:
                try:
                    arrival = self._arrivals_out.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(arrival)
                size += len(arrival.payload)
            try:
                await self._store(batch)
            finally:
                self._storing -= len(batch)
                self._notify()

    async def _store(self, batch: list[_Arrival]) -> None:
        assert self._picker is not None
        assert self.output is not None
        picker = self._picker
        # A chunk verified since it was asked for (an endgame duplicate) is not
        # written again.
        fresh = [arrival for arrival in batch if not picker.verified[arrival.index]]
        good = await self._run_blocking(functools.partial(_check_and_write, self.output, fresh))
        for arrival, ok in zip(fresh, good, strict=True):
            if not ok:
                self._drop(
                    arrival.peer,
                    "sent a chunk that fails verification",
                    failures.BAD_CHUNK,
                    ban=True,
                )
                continue
            new, _others = picker.received(arrival.peer, arrival.index)
            if new:
                self._done_bytes += len(arrival.payload)
                self._unsynced += 1
                served = self.report.chunks_from
                served[arrival.peer] = served.get(arrival.peer, 0) + 1
        for arrival in batch:
            if picker.verified[arrival.index]:
                # Ends what is still in flight for it (a no-op for what was just stored).
                picker.received(arrival.peer, arrival.index)
        if (
            self._unsynced >= PERSIST_EVERY_CHUNKS
            or time.monotonic() - self._last_persist >= PERSIST_EVERY_S
        ):
            self._persist_wanted.set()

    # -- bookkeeping

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self, timeout: float) -> None:
        event = self._changed
        with trio.move_on_after(timeout):
            await event.wait()

    async def _persist_loop(self) -> None:
        """Persist when the storing task asks: writes go on while a sync runs."""
        while True:
            await self._persist_wanted.wait()
            self._persist_wanted = trio.Event()
            await self._persist()
            self._announce_partial()

    def _announce_partial(self) -> None:
        """Tell ``announce`` once there is something to serve (only while registered)."""
        if self._announced or self._announce is None:
            return
        if self.durable is not None and self.durable.count() > 0:
            self._announced = True
            self._announce()

    async def _persist(self) -> None:
        """fsync what was written, then record it: never the other way round.

        Chunks are marked verified only after they were written, so the snapshot
        taken here names only chunks already written.
        """
        if self._picker is None or self.output is None or self._persisting:
            return
        self._persisting = True
        try:
            snapshot = self._picker.verified.copy()
            self._unsynced = 0
            self._last_persist = time.monotonic()
            await self._run_blocking(self.output.sync)
            self.durable = snapshot
            self._save_row("running", snapshot)
        finally:
            self._persisting = False

    def _save_row(self, state: str, verified: Bitfield | None = None) -> None:
        assert self.signed is not None
        bits = verified if verified is not None else self.durable
        assert bits is not None
        self._catalog.save_download(
            DownloadRow(
                str(self.cid),
                str(self.dest),
                self.signed.data,
                bits.to_bytes(),
                state,
                int(time.time()),
            )
        )

    async def _report_progress(self) -> None:
        if self._progress is None:
            return
        while True:
            await self._progress(
                {
                    "done": self._done_bytes,
                    "total": self.report.size,
                    "peers": len(self._links),
                }
            )
            await trio.sleep(PROGRESS_EVERY_S)

    def _finish(self) -> None:
        assert self.output is not None
        self.output.finalize(force=self._force)
        self._save_row("complete")
