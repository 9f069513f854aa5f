"""One download: providers -> verified manifest -> chunks from every peer -> the file.

Three parts, as iroh-blobs splits its downloader: transfer/setup.py dials providers
until one sends the manifest and opens the partial, returning a whole
:class:`~p2pshare.transfer.setup.Prepared`; the pure
:class:`~p2pshare.transfer.swarm.Swarm` (which providers, when to dial again, look
up or give up) and :class:`~p2pshare.transfer.picker.Picker` (which chunk from
whom) decide; this module is the trio shell that does what they decide, with
:class:`~p2pshare.transfer.links.Links` holding the streams.

Every chunk is checked against the signed manifest before it is written; a
provider that sends one bad chunk is banned for this download and its chunks go to
the others.  Progress is recorded in the catalog only after the chunks it names are
on disk (fsync first), so after a crash the download resumes without fetching any
verified chunk twice.

The event loop only receives (and, on a data channel, decrypts): every chunk that
arrives goes to one storing task, which hashes and writes whole batches of them in
one worker-thread call.  BLAKE3 and ``pwrite`` release the GIL, so that work runs
on another core meanwhile, and the thread hand-off is paid once per batch.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.errors import RemoteError
from p2pshare.modes import PRIVATE_UMASK
from p2pshare.proto.manifest import expected_chunk_hash
from p2pshare.proto.pages import page_for_chunk
from p2pshare.proto.transfer import NotAvailableError, UnknownContentError
from p2pshare.store.lifecycle import DownloadState
from p2pshare.transfer import failures
from p2pshare.transfer.blocking import RunBlocking, run_in_thread
from p2pshare.transfer.destination import free_bytes
from p2pshare.transfer.inflight import InFlight
from p2pshare.transfer.links import Links
from p2pshare.transfer.outpath import PLAIN_OUTPUT, UserOutput, named_refusal
from p2pshare.transfer.output import Arrival
from p2pshare.transfer.records import (
    DownloadRecords,
    DownloadReport,
    MemoryRecords,
    PartialContent,
    progress_row,
)
from p2pshare.transfer.setup import REQUEST_TIMEOUT, Prepared, fetch_manifest, open_partial
from p2pshare.transfer.swarm import (
    CONNECT_TIMEOUT,
    HAVE_REFRESH_S,
    LOOKUP_INTERVAL,
    MAX_PROVIDERS,
    REATTACH_DELAYS,
    Refresh,
    Source,
    Swarm,
    Tick,
    slow,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.bitfield import Bitfield
    from p2pshare.proto.cid import ContentId
    from p2pshare.proto.pages import HashPage
    from p2pshare.proto.signed_manifest import SignedManifest
    from p2pshare.transfer.links import FindSources
    from p2pshare.transfer.output import PartialOutput
    from p2pshare.transfer.peer import PeerLink
    from p2pshare.transfer.source import LocalContent


__all__ = [
    "CONNECT_TIMEOUT",
    "LOOKUP_INTERVAL",
    "REATTACH_DELAYS",
    "REQUEST_TIMEOUT",
    "Download",
    "DownloadRecords",
    "DownloadReport",
    "MemoryRecords",
    "Source",
]

log = logging.getLogger(__name__)
PIPELINE = 4
PERSIST_EVERY_CHUNKS = 32
PERSIST_EVERY_S = 1.0
# Chunks received and not yet stored (about 16 MiB, at most 64 chunks since a small
# chunk may keep a whole received buffer alive), and the most one worker-thread call
# hashes and writes: bounds the memory a fast link can fill while the disk lags.
STORE_QUEUE_BYTES = 16 << 20
STORE_QUEUE_CHUNKS = 64
STORE_BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class _Settings:
    """How a download was asked for: what the transfer needs of it."""

    cid: ContentId
    dest: Path
    force: bool
    catalog: DownloadRecords
    pipeline: int
    announce: Callable[[], None] | None
    run_blocking: RunBlocking


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
        find_sources: FindSources,
        hints: list[Source],
        pipeline: int = PIPELINE,
        announce: Callable[[], None] | None = None,
        umask: int = PRIVATE_UMASK,
        free_space: Callable[[Path], int] = free_bytes,
        run_blocking: RunBlocking = run_in_thread,
        redirect: Callable[[SignedManifest], Path | None] | None = None,
        output: UserOutput = PLAIN_OUTPUT,
    ) -> None:
        """``announce`` is called at most once, while partial: when verified chunks are on
        disk and served to other peers, and the download is worth finding before it
        completes (swarm.slow; ``get`` announces the content in the DHT then).
        ``umask`` sets the final modes of what is written (p2pshare.modes).
        ``free_space`` tells the bytes free in a directory (tests fake a small disk).
        ``run_blocking`` runs hashing, writing and fsync off the event loop.
        ``redirect`` sees the verified manifest before anything is written: it may
        raise to refuse the content, or name another destination (a private share's
        ciphertext goes to the store, not to ``dest``), which gets PRIVATE_UMASK.
        ``output``: where the user's content may go (never the home; -o DIR/)."""
        self.cid = cid
        self.dest = dest
        self._settings = _Settings(cid, dest, force, catalog, pipeline, announce, run_blocking)
        self._local = local
        self._open_stream = open_stream
        self._find_sources = find_sources
        self._umask = umask
        self._free_space = free_space
        self._swarm = Swarm(hints)
        self._redirect = redirect
        self._output = output
        self._transfer: Transfer | None = None
        self.report = DownloadReport(str(cid), str(dest), 0, 0, 0, banned=self._swarm.banned)

    # What the download holds so far: None (or empty) until its manifest came.

    @property
    def signed(self) -> SignedManifest | None:
        return None if self._transfer is None else self._transfer.signed

    @property
    def pages(self) -> dict[int, HashPage]:
        return {} if self._transfer is None else self._transfer.pages

    @property
    def output(self) -> PartialOutput | None:
        """Set once the partial is this download's: a caller removes it on failure then."""
        return None if self._transfer is None else self._transfer.output

    @property
    def durable(self) -> Bitfield | None:
        return None if self._transfer is None else self._transfer.durable

    def progress(self) -> dict[str, Any] | None:
        """Bytes verified of the total and providers linked; None until the manifest came.

        Read when someone asks (a `get` shows it a few times a second), not pushed: a
        download in a crowd would otherwise wake up for it even when nobody watches."""
        return None if self._transfer is None else self._transfer.progress()

    async def run(self) -> DownloadReport:
        started = time.monotonic()
        settings = self._settings
        self._output.check(self.dest, force=settings.force)
        async with trio.open_nursery() as nursery:
            links = Links(
                cid=self.cid,
                nursery=nursery,
                swarm=self._swarm,
                open_stream=self._open_stream,
                find_sources=self._find_sources,
            )
            signed, pages = await fetch_manifest(links)
            target = None if self._redirect is None else self._redirect(signed)
            # A redirect goes to the node's store, not the user's files: private, unfenced.
            umask, fence = (PRIVATE_UMASK, None) if target else (self._umask, self._output.fence)
            if target is None:
                target = self._output.named(self.dest, signed.manifest, self.cid)
                self.report.destination = str(target)
            self.dest = target
            settings = self._settings = replace(
                settings, dest=target, force=self._output.may_replace(force=settings.force)
            )
            prepared = open_partial(
                cid=self.cid,
                dest=self.dest,
                signed=signed,
                pages=pages,
                catalog=settings.catalog,
                umask=umask,
                free_space=self._free_space,
                fence=fence,
            )
            transfer = self._transfer = Transfer(settings, prepared, links, self.report)
            try:
                transfer.save_row(DownloadState.RUNNING)
                self._local.register(self.cid, PartialContent(transfer))
                try:
                    await transfer.run()
                finally:
                    self._local.unregister(self.cid)
                    with trio.CancelScope(shield=True):
                        await transfer.persist()
                        await links.close_all()
            finally:
                prepared.output.close()
            nursery.cancel_scope.cancel()
        with named_refusal(self.dest, self._output.fence, into=self._output.into_directory):
            transfer.finish()
        self.report.elapsed_s = time.monotonic() - started
        return self.report


class Transfer:
    """The chunks of one prepared download: the trio shell around the Picker (which
    chunk from whom) and the Swarm (which providers, when)."""

    def __init__(
        self, settings: _Settings, prepared: Prepared, links: Links, report: DownloadReport
    ) -> None:
        self.cid = settings.cid
        self._settings = settings
        self._links = links
        self._swarm = links.swarm
        self.report = report
        self.signed = prepared.signed
        self.pages = prepared.pages
        self.output = prepared.output
        # Chunks fsynced and recorded: what other peers are told we hold.
        self.durable = prepared.verified.copy()
        self._picker = prepared.picker
        self._in_flight = InFlight(REQUEST_TIMEOUT)
        self._pipelines: dict[str, trio.CancelScope] = {}
        self._changed = trio.Event()
        manifest = prepared.signed.manifest
        self._arrivals_in, self._arrivals_out = trio.open_memory_channel[Arrival](
            min(STORE_QUEUE_CHUNKS, max(1, STORE_QUEUE_BYTES // manifest.chunk_size))
        )
        # Chunks handed to the storing task and not yet stored (checked or refused).
        self._storing = 0
        self._persist_wanted = trio.Event()
        self._unsynced = 0
        self._last_persist = 0.0
        self._persisting = False
        self._announced = False
        # The transfer runs from its making on: its rate is judged from here.
        self._started = trio.current_time()
        verified = prepared.verified
        self._done_bytes = sum(manifest.locate_chunk(i).length for i in verified.iter_set())
        report.size = manifest.total_size
        report.files = len(manifest.entries)
        report.chunks = manifest.total_chunks
        report.resumed_chunks = verified.count()
        links.on_drop = self._dropped

    def _dropped(self, peer: str) -> None:
        pipeline = self._pipelines.pop(peer, None)
        if pipeline is not None:
            pipeline.cancel()
        self._picker.remove_peer(peer)
        self._notify()

    async def run(self) -> None:
        """Fetch every missing chunk; give up once no provider that could send one was
        left, or found, for ``CONNECT_TIMEOUT`` (and no lookup is still under way)."""
        picker, swarm = self._picker, self._swarm
        swarm.start_transfer(self._started)
        async with trio.open_nursery() as workers:
            workers.start_soon(self._store_loop)
            workers.start_soon(self._persist_loop)
            for peer, link in list(self._links.items()):
                self._keep(workers, swarm.sources[peer], link)
            workers.start_soon(self._lookup_loop, workers)
            while not picker.done:
                tick = swarm.on_tick(trio.current_time(), picker, storing=self._storing)
                if tick is Tick.FAIL:
                    break
                if tick is Tick.LOOK_UP:
                    self._notify()
                # Also with nothing stored: a stalled download's rate falls with time.
                self._announce_partial()
                await self._wait_change(1.0)
            workers.cancel_scope.cancel()
        if not picker.done:
            missing = self.report.chunks - picker.verified.count()
            raise failures.stalled(self.cid, missing, swarm.stall_reasons(picker))

    def _keep(self, workers: trio.Nursery, source: Source, link: PeerLink | None) -> None:
        self._swarm.keep(source.peer_id)
        workers.start_soon(self._keep_peer, source, link)

    async def _keep_peer(self, source: Source, link: PeerLink | None) -> None:
        """Fetch from one provider until the download ends, dialing it again (after
        ``REATTACH_DELAYS``) when its stream breaks, stalls or it fails a request."""
        peer, swarm = source.peer_id, self._swarm
        try:
            while True:
                if link is None:
                    link = await self._links.attach(swarm.sources.get(peer, source))
                served = self.report.chunks_from.get(peer, 0)
                if link is not None:
                    if peer in swarm.banned:
                        # Its last stream's bad chunk was found while this one opened.
                        self._links.drop(
                            peer, "banned for a bad chunk", failures.BAD_CHUNK, ban=True
                        )
                        return
                    await self._serve_peer(peer, link)
                    link = None
                more = self.report.chunks_from.get(peer, 0) > served
                delay = swarm.after_link(peer, served=more, done=self._picker.done)
                if delay is None:
                    return
                await trio.sleep(delay)
                log.info("dialing provider %s again", peer)
        finally:
            swarm.on_gone(peer)
            self._notify()

    async def _lookup_loop(self, workers: trio.Nursery) -> None:
        """Ask for providers every ``LOOKUP_INTERVAL``, and at once when no link is left.

        Each lookup asks on until it knows as many providers as there is room for: one
        that stopped at the first answer naming anyone got the seeder alone, lookup
        after lookup, wherever the other downloaders' records were (bench/downloaders.py).
        """
        swarm = self._swarm
        while True:
            while (wait := swarm.lookup_due(trio.current_time())) is not None:
                await self._wait_change(wait)
            swarm.on_lookup_start()
            try:
                found = await self._links.lookup(want=MAX_PROVIDERS)
            finally:
                swarm.on_lookup_end(trio.current_time())
            for source in swarm.on_found(found):
                log.info("provider %s found during the download of %s", source.peer_id, self.cid)
                self._keep(workers, source, None)
            self._notify()

    async def _serve_peer(self, peer: str, link: PeerLink) -> None:
        """Fetch from ``link`` until the download is done or the link is dropped."""
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                have = await link.have(self.cid, self.signed.manifest.total_chunks)
        except UnknownContentError as exc:
            self._links.drop(peer, f"does not hold it: {exc}", failures.UNSHARED, refused=True)
            return
        except NotAvailableError as exc:
            self._links.drop(peer, f"cannot serve it: {exc}", failures.STALE, refused=True)
            return
        except (RemoteError, trio.TooSlowError) as exc:
            self._links.drop(peer, f"no chunk list: {exc}", failures.GONE)
            return
        self._picker.add_peer(peer, have)
        if peer not in self.report.peers:
            self.report.peers.append(peer)
        self._notify()
        async with trio.open_nursery() as pipeline:
            self._pipelines[peer] = pipeline.cancel_scope
            for _ in range(self._settings.pipeline):
                pipeline.start_soon(self._fetch_loop, peer, link, pipeline.cancel_scope)
            if not have.complete:
                pipeline.start_soon(self._refresh_have, peer, link)
        self._pipelines.pop(peer, None)

    async def _refresh_have(self, peer: str, link: PeerLink) -> None:
        """Ask a partial provider for its chunk list again while we have nothing in
        flight with it, until it holds everything."""
        picker, total = self._picker, self.signed.manifest.total_chunks
        while True:
            await trio.sleep(HAVE_REFRESH_S)
            what = self._swarm.refresh(peer, picker)
            if what is Refresh.STOP:
                return
            if what is Refresh.SKIP:
                continue
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    have = await link.have(self.cid, total)
            except (RemoteError, trio.TooSlowError) as exc:
                # A partial provider that finished or stopped says so here: dialed again,
                # it may serve the whole share.
                self._links.drop(peer, f"no chunk list: {exc}", failures.GONE)
                return
            picker.update_have(peer, have)
            self._notify()

    async def _fetch_loop(self, peer: str, link: PeerLink, scope: trio.CancelScope) -> None:
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
                self._links.drop(peer, f"{type(exc).__name__}: {exc}", why)
            except (RemoteError, trio.TooSlowError) as exc:
                self._links.drop(peer, f"{type(exc).__name__}: {exc}", failures.GONE)
        scope.cancel()

    async def _fetch_run(self, peer: str, link: PeerLink, run: range) -> None:
        manifest = self.signed.manifest

        def length(index: int) -> int:
            return manifest.locate_chunk(index).length

        self.report.requested_bytes += sum(length(i) for i in run)
        with self._in_flight.request(peer, run) as request:
            try:
                with request.scope:
                    async with aclosing(link.chunks(self.cid, run, length)) as chunks:
                        async for index, payload in chunks:
                            await self._arrived(peer, index, payload)
                            # Still in flight for this peer until stored.
                            request.pending.discard(index)
                if request.scope.cancelled_caught and not request.superseded:
                    raise trio.TooSlowError
            finally:
                if peer in self._links:
                    for index in request.pending:
                        self._picker.release(peer, index)

    async def _arrived(self, peer: str, index: int, payload: memoryview) -> None:
        manifest = self.signed.manifest
        page = self.pages.get(page_for_chunk(index)[0]) if manifest.paged else None
        expected = expected_chunk_hash(manifest, index, page)
        # Counted before the await, so the download never looks finished, or out of
        # providers, while a chunk is on its way.
        self._storing += 1
        try:
            await self._arrivals_in.send(Arrival(peer, index, expected, payload))
        except BaseException:
            self._storing -= 1
            raise
        self.report.received_bytes += len(payload)
        self._in_flight.arrived(peer)

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

    async def _store(self, batch: list[Arrival]) -> None:
        picker = self._picker
        # A chunk verified since it was asked for (an endgame duplicate) is not
        # written again.
        fresh = [arrival for arrival in batch if not picker.verified[arrival.index]]
        good = await self._settings.run_blocking(
            functools.partial(self.output.check_and_write, fresh)
        )
        for arrival, ok in zip(fresh, good, strict=True):
            if not ok:
                self._links.drop(
                    arrival.peer,
                    "sent a chunk that fails verification",
                    failures.BAD_CHUNK,
                    ban=True,
                )
                continue
            new, others = picker.received(arrival.peer, arrival.index)
            self._in_flight.cancel_superseded(others, picker.verified)
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
            await self.persist()
            self._announce_partial()

    def _announce_partial(self) -> None:
        """Tell ``announce`` once, when the download holds chunks to serve and is worth
        finding while partial (only while registered)."""
        if self._announced or self._settings.announce is None or not self.durable.count():
            return
        verified = self._picker.verified.count()
        if slow(
            missing=self.report.chunks - verified,
            fetched=verified - self.report.resumed_chunks,
            elapsed=trio.current_time() - self._started,
        ):
            self._announced = True
            self._settings.announce()

    async def persist(self) -> None:
        """fsync what was written, then record it: never the other way round.

        Chunks are marked verified only after they were written, so the snapshot
        taken here names only chunks already written.
        """
        if self._persisting:
            return
        self._persisting = True
        try:
            snapshot = self._picker.verified.copy()
            self._unsynced = 0
            self._last_persist = time.monotonic()
            await self._settings.run_blocking(self.output.sync)
            self.durable = snapshot
            self.save_row(DownloadState.RUNNING, snapshot)
        finally:
            self._persisting = False

    def save_row(self, state: DownloadState, verified: Bitfield | None = None) -> None:
        bits = verified if verified is not None else self.durable
        row = progress_row(self.cid, self._settings.dest, self.signed, bits, state)
        self._settings.catalog.save_download(row)

    def progress(self) -> dict[str, Any]:
        return {"done": self._done_bytes, "total": self.report.size, "peers": len(self._links)}

    def finish(self) -> None:
        self.output.finalize(force=self._settings.force)
        self.save_row(DownloadState.COMPLETE)
