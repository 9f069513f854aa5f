"""Downloads as jobs of the daemon: resumed at start, followed by ``get``, paused, cancelled.

A ``get`` records what the user asked for (content, destination, the ticket's
provider, ``--force``) in the catalog before anything moves, then follows the
job.  The job belongs to the daemon, not to the command: a daemon that stops or
crashes resumes every download that was running at its next start.  Ctrl-C of
the last ``get`` following a download pauses it, as pausing does in BitTorrent
clients and browsers: a paused download stays paused across restarts until a
``get`` resumes it or ``downloads cancel`` discards it.

A resumed download that finds no provider retries with backoff for
``give_up_after`` seconds; any other failure, or that deadline, marks it failed
with the reason, which ``downloads`` shows.  Each retry looks the providers up
again (a provider that moved is found at its new address); a provider named by
the request that connects meanwhile ends the wait at once.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.control.server import Emit, Handler, InvalidParamsError
from p2pshare.errors import IntegrityError, NoPeersError, UserError, leaf_errors
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.cid import ContentId
from p2pshare.proto.signed_manifest import decode_signed_manifest
from p2pshare.store.lifecycle import DownloadState, StopReason
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.outpath import UserOutput, into_directory
from p2pshare.transfer.output import partial_path

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.store.catalog import Catalog, DownloadRequest, DownloadRow
    from p2pshare.transfer.outpath import HomeFence

    # What a running attempt reports when asked: bytes done, total and peers, or None
    # before it knows them.  The runner hands one to its ``Watch`` once it has it.
    Probe = Callable[[], dict[str, Any] | None]
    Watch = Callable[[Probe], None]
    Runner = Callable[[DownloadRequest, Watch], Awaitable[dict[str, Any]]]

log = logging.getLogger(__name__)

ACTIVE, PAUSED, FAILED = DownloadState.ACTIVE, DownloadState.PAUSED, DownloadState.FAILED
# How often a following `get` is told the progress: rich draws the bar between events.
PROGRESS_EVERY_S = 0.5
# A get run again right after Ctrl-C waits this long for the paused job to let go.
TAKEOVER_WAIT = 10.0
# This layer owns the retries of a whole download (the swarm of transfer/swarm.py
# owns those of one provider within it).
RETRY_FIRST_S = 10.0
RETRY_MAX_S = 600.0
# Seeders come and go over a day; after that a resume gives up and says why.
GIVE_UP_AFTER_S = 24 * 3600.0


class ClientGoneError(UserError):
    """The command following a download went away (Ctrl-C)."""


class DownloadStoppedError(UserError):
    """The download was paused or cancelled while a get followed it."""


class UnknownDownloadError(UserError):
    """No unfinished download of that content."""


# Device, inode, size and modification time (ns) of a file.
FileIdentity = tuple[int, int, int, int]


@dataclass(eq=False)
class Job:
    """One download in this daemon run, from request to outcome."""

    request: DownloadRequest
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    wake: trio.Event = field(default_factory=trio.Event)
    probe: Probe | None = None
    result: dict[str, Any] | None = None
    error: UserError | None = None
    stop: StopReason | None = None
    watchers: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    # Set when a provider the request names connects while the job waits to retry.
    provider_back: bool = False
    # What the completed download put in place, as ``_placed`` saw it then.
    placed: FileIdentity | None = None

    @property
    def progress(self) -> dict[str, Any] | None:
        return None if self.probe is None else self.probe()

    def watch(self, probe: Probe) -> None:
        self.probe = probe


def _user_error(exc: Exception, cid: str) -> UserError:
    for leaf in leaf_errors(exc):
        if isinstance(leaf, UserError):
            return leaf
    log.error("download of %s failed", cid, exc_info=exc)
    return UserError(f"the download of {cid} failed on an internal error; see daemon.log")


def _transient(error: UserError) -> bool:
    # No peers yet is as passing as no providers: a peer may connect (or be connected).
    return isinstance(error, NoProvidersError | NoPeersError)


def _placed(job: Job) -> FileIdentity | None:
    """What is at the completed ``job``'s output now: device, inode, size and mtime."""
    assert job.result is not None
    try:
        st = Path(_written(job.request.destination, job.result)).lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _completed(job: Job, request: DownloadRequest) -> bool:
    """Whether ``job`` already put this very request in place during this daemon run
    (a get run after the daemon resumed and finished it returns that summary), and
    what it put there is still there: a file the user changed or replaced since is
    not the download's, and a get reporting it saved would be false."""
    return (
        job.result is not None
        and job.request.destination == request.destination
        and not request.force
        and job.placed is not None
        and _placed(job) == job.placed
    )


def _written(destination: str, result: dict[str, Any]) -> str:
    """Where a completed download was written: -o DIR/ named it after the share."""
    return str(result["destination"]) if into_directory(destination) else destination


def written_to(destination: str, written: str) -> bool:
    """Whether a download asked for ``destination`` writes ``written``: the same path,
    or, for ``-o DIR/``, a name in DIR."""
    if into_directory(destination):
        return Path(written).parent == Path(destination)
    return written == destination


def _shown(request: DownloadRequest, row: DownloadRow | None) -> str:
    """Where a download writes, as the user reads it: for ``-o DIR/``, DIR/NAME once the
    manifest has named it."""
    if (
        row is not None
        and into_directory(request.destination)
        and written_to(request.destination, row.destination)
    ):
        return row.destination
    # A private share's progress row names the ciphertext in the store: not the user's.
    return request.destination


def remove_partial(dest: Path) -> bool:
    """Delete the partial file or directory of ``dest``; return whether there was one."""
    path = partial_path(dest)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def remove_empty_parent(path: Path) -> None:
    """Remove the store's ``content/<digest>/`` made for ``path``, if nothing is in it."""
    with contextlib.suppress(OSError):
        path.parent.rmdir()


class DownloadManager:
    """Every download of the node; ``run`` in the daemon's nursery before serving requests."""

    def __init__(
        self,
        catalog: Catalog,
        runner: Runner,
        *,
        retry_first: float = RETRY_FIRST_S,
        retry_max: float = RETRY_MAX_S,
        give_up_after: float = GIVE_UP_AFTER_S,
        stored_at: Callable[[str], str] | None = None,
        fence: HomeFence | None = None,
    ) -> None:
        self._catalog = catalog
        # The node's home, which no download the user asked for may write in.
        self._fence = fence
        self._runner = runner
        # Where a download of a cid writes when it is redirected into the store (a
        # private share's ciphertext), not to the destination the user named.
        self._stored_at = stored_at
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._give_up_after = give_up_after
        self._jobs: dict[str, Job] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume every active download, then keep running the jobs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for request in self._catalog.download_requests():
                if request.state == ACTIVE:
                    log.info("resuming the download of %s to %s", request.cid, request.destination)
                    self._spawn(request)
            task_status.started()
            await trio.sleep_forever()

    def job(self, cid: str) -> Job | None:
        return self._jobs.get(cid)

    def _spawn(self, request: DownloadRequest) -> Job:
        assert self._nursery is not None, "DownloadManager.run has not started"
        job = self._jobs[request.cid] = Job(request)
        self._nursery.start_soon(self._drive, job)
        return job

    # -- asking for a download

    async def submit(self, request: DownloadRequest) -> Job:
        """The job that fetches ``request``: the running one for the same destination,
        else a new one."""
        cid, dest = request.cid, request.destination
        job = self._jobs.get(cid)
        if job is not None and job.stop is not None:
            with trio.move_on_after(TAKEOVER_WAIT):
                await job.finished.wait()
            job = self._jobs.get(cid)
        if job is not None and not job.finished.is_set():
            if job.request.destination == dest and job.stop is None:
                return job
            raise UserError(
                f"{cid} is already being downloaded by this node to {job.request.destination}"
            )
        if job is not None and _completed(job, request):
            return job
        stored = self._catalog.download_request(cid)
        if stored is not None and stored.destination != dest:
            raise UserError(
                f"an unfinished download of {cid} to {stored.destination} exists; "
                f"resume it with that destination or discard it with: "
                f"p2pshare downloads cancel {cid}"
            )
        for other in self._catalog.download_requests():
            if other.destination == dest and other.cid != cid and not into_directory(dest):
                # Its partial lies where this one's would: neither may take the other's.
                raise UserError(
                    f"an unfinished download of {other.cid} goes to {dest}; resume it, or "
                    f"discard it first with: p2pshare downloads cancel {other.cid}"
                )
        self._check(request)
        if stored is not None:
            known = {peer for peer, _ in request.sources}
            extra = tuple(s for s in stored.sources if s[0] not in known)
            request = replace(
                request, sources=request.sources + extra, created_at=stored.created_at
            )
        self._catalog.save_download_request(request)
        return self._spawn(request)

    def _check(self, request: DownloadRequest) -> None:
        """Refuse a destination the download may not write; the node's own store (a
        private share fetched to seed it) is not the user's output and is not fenced."""
        dest = request.destination
        own = self._stored_at is not None and dest == self._stored_at(request.cid)
        output = UserOutput(None if own else self._fence, into_directory(dest))
        output.check(Path(dest), force=request.force)

    async def follow(self, job: Job, emit: Emit) -> dict[str, Any]:
        """Send the job's progress to a client until it ends; return its summary.

        The last client to go away (Ctrl-C) pauses the job."""
        job.watchers += 1
        job.wake.set()
        try:
            while not job.finished.is_set():
                with trio.move_on_after(PROGRESS_EVERY_S):
                    await job.finished.wait()
                if job.finished.is_set():
                    break
                try:
                    if (progress := job.progress) is not None:
                        await emit("progress", progress)
                    else:
                        await emit("waiting", self._waiting(job))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    if job.watchers == 1 and job.stop is None:
                        self._stop(job, StopReason.PAUSED)
                    raise ClientGoneError(
                        f"the command following the download of {job.request.cid} went away"
                    ) from None
        finally:
            job.watchers -= 1
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    @staticmethod
    def _waiting(job: Job) -> dict[str, Any]:
        retry_in = None if job.retry_at is None else max(0.0, job.retry_at - trio.current_time())
        return {"retry_in_s": retry_in, "error": job.last_error}

    def _stop(self, job: Job, why: StopReason) -> None:
        job.stop = why
        job.scope.cancel()

    # -- running a job

    async def _drive(self, job: Job) -> None:
        try:
            try:
                with job.scope:
                    await self._attempts(job)
            except Exception as exc:  # noqa: BLE001 - raised while the job was being stopped
                log.warning("download of %s stopped with an error: %r", job.request.cid, exc)
            if job.result is None and job.error is None:
                self._stopped(job)
        finally:
            if job.result is None and job.error is None:
                job.error = DownloadStoppedError(
                    f"the daemon stopped; the download of {job.request.cid} resumes at its "
                    "next start"
                )
            job.finished.set()

    async def _attempts(self, job: Job) -> None:
        cid = job.request.cid
        delay = self._retry_first
        first_failure: float | None = None
        while True:
            try:
                job.result = await self._runner(job.request, job.watch)
            except Exception as exc:  # noqa: BLE001 - a failing download must not stop the daemon
                error = _user_error(exc, cid)
            else:
                job.placed = _placed(job)
                self._catalog.remove_download_request(cid)
                return
            now = trio.current_time()
            first_failure = now if first_failure is None else first_failure
            in_time = now - first_failure < self._give_up_after
            if job.watchers == 0 and _transient(error) and in_time:
                log.info("download of %s: %s; retrying in %.0f s", cid, error, delay)
                job.last_error = str(error)
                self._catalog.set_download_state(cid, ACTIVE, str(error), int(time.time()))
                job.retry_at = now + delay
                with trio.move_on_at(job.retry_at):
                    await job.wake.wait()
                job.wake = trio.Event()
                job.retry_at = None
                job.probe = None
                # A provider that came back is news: the schedule starts over.
                delay = self._retry_first if job.provider_back else min(delay * 2, self._retry_max)
                job.provider_back = False
                continue
            if not in_time:
                error = UserError(
                    f"{error} (gave up after retrying for {self._give_up_after / 3600:g} h; "
                    "run the same get to try again)"
                )
            log.info("download of %s failed: %s", cid, error)
            job.error = error
            self._end(job, FAILED, str(error), watched=job.watchers > 0)
            return

    def peer_connected(self, peer_id: str) -> None:
        """A peer connected: a download waiting to retry for want of it (the provider its
        ticket names) retries now, not at its next scheduled retry (field test #27)."""
        for job in self._jobs.values():
            if job.retry_at is not None and any(p == peer_id for p, _ in job.request.sources):
                job.provider_back = True
                job.wake.set()

    def _stopped(self, job: Job) -> None:
        cid = job.request.cid
        if job.stop == StopReason.PAUSED:
            log.info("download of %s paused", cid)
            job.error = DownloadStoppedError(
                f"the download of {cid} was paused; run the same get to resume it"
            )
            self._end(job, PAUSED, None, watched=True)
        else:
            job.error = DownloadStoppedError(f"the download of {cid} was cancelled")

    def _end(self, job: Job, state: DownloadState, error: str | None, *, watched: bool) -> None:
        """Record a download that stopped unfinished; one a get watched that never
        wrote anything is forgotten: the user saw why, and there is nothing to resume."""
        cid = job.request.cid
        if watched and self._progress_row(job.request) is None:
            self._catalog.remove_download_request(cid)
        else:
            self._catalog.set_download_state(cid, state, error, int(time.time()))

    # -- listing and cancelling

    def listing(self) -> list[dict[str, Any]]:
        return [self._describe(request) for request in self._catalog.download_requests()]

    def _progress_row(self, request: DownloadRequest) -> DownloadRow | None:
        """The verified-chunk record of this request, if anything was written yet."""
        row = self._catalog.download(request.cid)
        if row is None or row.state != DownloadState.RUNNING:
            return None
        stored = None if self._stored_at is None else self._stored_at(request.cid)
        if row.destination != stored and not written_to(request.destination, row.destination):
            return None
        return row

    def _describe(self, request: DownloadRequest) -> dict[str, Any]:
        size = chunks = verified = None
        row = self._progress_row(request)
        if row is not None:
            try:
                signed = decode_signed_manifest(row.signed_manifest, ContentId.parse(request.cid))
            except IntegrityError:
                log.warning("the recorded manifest of %s is damaged", request.cid)
            else:
                manifest = signed.manifest
                size, chunks = manifest.total_size, manifest.total_chunks
                verified = Bitfield.from_bytes(row.verified, chunks).count()
        job = self._jobs.get(request.cid)
        live = job is not None and not job.finished.is_set()
        state, retry_in = request.state, None
        if request.state == ACTIVE:
            state = DownloadState.RUNNING
            if job is not None and live and job.retry_at is not None:
                state, retry_in = DownloadState.RETRYING, round(self._waiting(job)["retry_in_s"], 1)
        return {
            "cid": request.cid,
            "destination": _shown(request, row),
            "state": state,
            "error": request.error,
            "retry_in_s": retry_in,
            "size": size,
            "chunks": chunks,
            "verified_chunks": verified,
            "created_at": request.created_at,
            "updated_at": request.updated_at,
        }

    async def cancel(self, cid: str) -> dict[str, Any]:
        """Stop the download of ``cid`` if it runs, delete its partial and its records."""
        request = self._catalog.download_request(cid)
        job = self._jobs.get(cid)
        if job is not None and not job.finished.is_set():
            self._stop(job, StopReason.CANCELLED)
            await job.finished.wait()
            request = job.request
        if request is None:
            raise UnknownDownloadError(
                f"there is no unfinished download of {cid}; p2pshare downloads lists them"
            )
        # Only a partial this node's record says it wrote: something else found at that
        # name (a download refused it as in the way) is not ours to delete.
        row = self._progress_row(request)
        removed = row is not None and await trio.to_thread.run_sync(
            remove_partial, Path(row.destination)
        )
        self._catalog.forget_download(cid)
        if self._stored_at is not None:
            remove_empty_parent(Path(self._stored_at(cid)))
        shown = _shown(request, row)
        log.info("download of %s to %s cancelled", cid, shown)
        return {"cid": cid, "destination": shown, "removed_partial": removed}

    # -- control methods

    async def rpc_downloads(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        return {"downloads": self.listing()}

    async def rpc_cancel(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        text = params.get("cid")
        if not isinstance(text, str) or not text:
            raise InvalidParamsError("parameter 'cid' must be a non-empty string")
        return await self.cancel(str(ContentId.parse(text)))

    def handlers(self) -> dict[str, Handler]:
        return {"downloads": self.rpc_downloads, "cancel_download": self.rpc_cancel}
