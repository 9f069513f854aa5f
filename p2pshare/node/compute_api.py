"""Compute on a node: the worker service's wiring and the ``compute_*`` control methods.

* ``compute_offer`` shows this node's offer and changes it while the daemon runs;
* ``compute_peers`` finds workers through the DHT and lists their signed offers;
* ``compute_run`` shares a job's module and inputs, runs it on k workers, compares
  their receipts and fetches the verified output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import trio

from p2pshare.compute.requester import MAX_REPLICAS, JobRequest, Requester
from p2pshare.compute.service import ComputeService, Fetched
from p2pshare.config import check_changes
from p2pshare.control.server import Emit, Handler, InvalidParamsError, umask_param
from p2pshare.errors import P2PShareError, RemoteError, UserError
from p2pshare.modes import file_mode
from p2pshare.node.job_outputs import JobOutputs
from p2pshare.node.timeouts import WORKER_FIND_TIMEOUT, WORKER_OPEN_TIMEOUT
from p2pshare.proto.job import PROTOCOL_ID, JobRejectedError, RejectCode
from p2pshare.proto.jobspec import JobLimits
from p2pshare.proto.offer import COMPUTE_KEY
from p2pshare.store.guard import check_job_file
from p2pshare.transfer.destination import (
    DestinationExistsError,
    NoSpaceError,
    place,
    staging_path,
    write_file,
)
from p2pshare.transfer.downloader import Source
from p2pshare.transfer.failures import ContentTooLargeError
from p2pshare.transfer.outpath import (
    check_into,
    check_output,
    into_directory,
    job_output_name,
    named_refusal,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pshare.compute.workers import Worker
    from p2pshare.config import ComputeConfig
    from p2pshare.identity import NodeKey
    from p2pshare.net.network import Network
    from p2pshare.net.streams import ByteStream, LibP2PStream
    from p2pshare.node.discovery import Discovery
    from p2pshare.node.transfer_api import TransferApi
    from p2pshare.proto.cid import ContentId
    from p2pshare.store.guard import HomeGuard
    from p2pshare.store.shares import PreparedShare, ShareStore
    from p2pshare.transfer.outpath import HomeFence

log = logging.getLogger(__name__)


@dataclass
class ComputeApi:
    network: Network
    store: ShareStore
    discovery: Discovery
    transfer: TransferApi
    key: NodeKey
    settings: ComputeConfig
    compute_dir: Path
    quota_bytes: int
    reprovide_interval: float
    service: ComputeService = field(init=False)
    outputs: JobOutputs = field(init=False)
    requester: Requester = field(init=False)
    _me: str = field(init=False)

    def __post_init__(self) -> None:
        self._me = self.network.peer_id
        self.outputs = JobOutputs(
            self.store, self.quota_bytes, lambda: self.service.settings.output_keep_seconds
        )
        self.service = ComputeService(
            self.settings,
            self.key,
            fetch=self.fetch,
            outputs=self.outputs,
            work_dir=self.compute_dir / "jobs",
            announce=self.advertise,
        )
        self.requester = Requester(
            share=self._share,
            unshare=self.store.remove,
            local_size=self._local_size,
            find_workers=self._find_workers,
            find_holders=self._find_holders,
            open_stream=self._open,
            modules_dir=self.compute_dir / "modules",
            find_timeout=WORKER_FIND_TIMEOUT,
        )

    # -- the worker side

    def register(self) -> None:
        # A job stream lasts as long as the job; the worker bounds fetching and running.
        self.network.register(PROTOCOL_ID, self._serve, bounded=False)

    async def _serve(self, stream: LibP2PStream) -> None:
        await self.service.handle(stream, stream.peer_id)

    async def advertise(self) -> None:
        """Announce this worker under the compute key now and at every reprovide interval."""
        while True:
            count = await self.discovery.provide_key(COMPUTE_KEY)
            log.info("compute offer announced to %d peers", count)
            await trio.sleep(self.reprovide_interval)

    async def fetch(
        self, cid: ContentId, dest: Path, *, max_bytes: int, hints: Sequence[str]
    ) -> Fetched:
        """A job's content, from this node's own shares if it holds them, else the network."""
        row = self.store.catalog.share(str(cid))
        if row is not None and not row.stale_reason:
            _check_single_file(row.kind, row.file_count, cid)
            _check_size(row.total_size, max_bytes, cid)
            await trio.to_thread.run_sync(self._copy_verified, str(cid), dest)
            return Fetched(row.total_size, 0)
        try:
            report = await self.transfer.fetch(
                cid, dest, hints=[Source(peer) for peer in hints], max_bytes=max_bytes
            )
        except ContentTooLargeError as exc:
            raise JobRejectedError(RejectCode.OVERSIZE, str(exc)) from None
        is_file = await trio.to_thread.run_sync(dest.is_file)
        _check_single_file("file" if is_file else "directory", report.files, cid)
        return Fetched(report.size, report.received_bytes)

    def _copy_verified(self, cid: str, dest: Path) -> None:
        # read_chunk checks every chunk against the manifest, so a share changed on
        # disk since it was shared cannot feed a job.
        chunks = self.store.signed_manifest(cid).manifest.total_chunks
        with dest.open("xb") as out:
            for index in range(chunks):
                out.write(self.store.read_chunk(cid, index))

    async def _open(self, peer_id: str, addrs: Sequence[str]) -> ByteStream:
        return await self.network.open_stream(peer_id, addrs, PROTOCOL_ID, WORKER_OPEN_TIMEOUT)

    # -- what the requester needs of the node

    async def _share(self, path: Path) -> tuple[ContentId, bool]:
        prepared = await trio.to_thread.run_sync(_prepare_file, self.store, path)
        if self.store.catalog.share(str(prepared.signed.cid)) is not None:
            return prepared.signed.cid, False
        self.store.commit(prepared)
        return prepared.signed.cid, True

    def _local_size(self, cid: ContentId) -> int:
        row = self.store.catalog.share(str(cid))
        return 0 if row is None else row.total_size

    async def _find_workers(self, want: int, timeout: float) -> list[tuple[str, tuple[str, ...]]]:
        self.discovery.require_peers()
        found = await self.discovery.find_key(COMPUTE_KEY, timeout, want)
        return [(p.peer_id, tuple(p.addrs)) for p in found if p.peer_id != self._me]

    async def _find_holders(self, cid: ContentId, timeout: float) -> list[str]:
        return [p.peer_id for p in await self.discovery.find(str(cid), timeout)]

    # -- control methods

    async def offer(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        changes = params.get("set") or {}
        if not isinstance(changes, dict):
            raise InvalidParamsError("parameter 'set' must be a map of [compute] options")
        if changes:
            self.service.configure(**check_changes("compute", changes))
            log.info("compute offer changed: %s", changes)
        return self.service.status()

    async def peers(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        timeout = _number(params, "timeout", WORKER_FIND_TIMEOUT, 0.1, 60)
        want = int(_number(params, "limit", 20, 1, 100))
        workers, failures = await self.requester.workers(want, timeout)
        return {
            "workers": [_worker_doc(w) for w in workers],
            "unreachable": [{"peer_id": p, "error": e} for p, e in sorted(failures.items())],
        }

    async def run(self, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        fence = self.transfer.fence
        request = _RunRequest.parse(params, self.transfer.daemon_umask, fence)
        await trio.to_thread.run_sync(_check_job_files, request, self.store.guard)
        output = _Destination(
            request.dest, request.force, request.umask, self.transfer, fence, request.into
        )
        return await self.requester.run(request.job(), output, emit)

    def handlers(self) -> dict[str, Handler]:
        return {
            "compute_offer": self.offer,
            "compute_peers": self.peers,
            "compute_run": self.run,
            "compute_outputs": self.outputs.list,
        }


@dataclass(frozen=True)
class _RunRequest:
    module: Path
    stdin: str | None
    inputs: list[tuple[str, str]]
    args: list[str]
    limits: JobLimits
    replicas: int
    dest: Path
    # The requesting user's: the output gets 0666 & ~umask, whatever the worker sent.
    umask: int
    force: bool
    # The user said (--yes) that files looking like private keys are meant to be sent.
    yes: bool
    # -o DIR/: dest is DIR/MODULE.out, which is never replaced.
    into: bool

    @classmethod
    def parse(cls, params: dict[str, Any], default_umask: int, fence: HomeFence) -> _RunRequest:
        module, dest = _abs_path(params, "module"), _abs_path(params, "dest")
        force, yes = params.get("force", False), params.get("yes", False)
        if not isinstance(force, bool) or not isinstance(yes, bool):
            raise InvalidParamsError("parameters 'force' and 'yes' must be true or false")
        into = into_directory(params["dest"])
        if into:
            # -o DIR/: the output goes in DIR, named after the module, and replaces nothing.
            check_into(dest, fence)
            dest /= job_output_name(module)
            force = False
        check_output(dest, fence, into=into, force=force)
        stdin = params.get("stdin")
        if stdin is not None and not isinstance(stdin, str):
            raise InvalidParamsError("parameter 'stdin' must be a path or a content ID")
        inputs = params.get("inputs") or []
        if not isinstance(inputs, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(x, str) for x in i)
            for i in inputs
        ):
            raise InvalidParamsError("parameter 'inputs' must be a list of [guest path, ref]")
        args = params.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidParamsError("parameter 'args' must be a list of strings")
        return cls(
            module=module,
            stdin=stdin,
            inputs=[(guest, ref) for guest, ref in inputs],
            args=args,
            limits=_limits(params.get("limits") or {}),
            replicas=int(_number(params, "replicas", 1, 1, MAX_REPLICAS)),
            dest=dest,
            umask=umask_param(params, default_umask),
            force=force,
            yes=yes,
            into=into,
        )

    def job(self) -> JobRequest:
        return JobRequest(
            self.module, self.stdin, self.inputs, self.args, self.limits, self.replicas
        )


@dataclass(frozen=True)
class _Destination:
    """Where compute_run puts the output: by the rules of ``-o``, with the user's umask."""

    path: Path
    force: bool
    umask: int
    transfer: TransferApi
    fence: HomeFence
    into: bool

    async def write(self, data: bytes) -> None:
        mode = file_mode(self.umask)
        with named_refusal(self.path, self.fence, into=self.into):
            await trio.to_thread.run_sync(
                partial(write_file, self.path, data, force=self.force, mode=mode, fence=self.fence)
            )

    async def fetch(self, cid: ContentId, peer_id: str, digest: bytes) -> bool:
        """Fetch a replica's stored stdout; False if it cannot be had or does not match.

        The output is staged under a fresh hidden name next to the destination and put
        in place by the rules of ``-o`` (transfer/destination.py); whatever fails, the
        staged file is removed.  A destination refused, or a disk too small, is the
        user's to fix, not the replica's fault: that error ends the run.
        """
        staged = staging_path(self.path)
        try:
            await self.transfer.fetch(cid, staged, hints=[Source(peer_id)], max_bytes=None)
            data_digest = await trio.to_thread.run_sync(_file_digest, staged)
            if data_digest != digest:
                log.warning("%s stored an output that differs from its receipt", peer_id)
                return False
            await trio.to_thread.run_sync(staged.chmod, file_mode(self.umask))
            move = partial(place, staged, self.path, force=self.force, fence=self.fence)
            with named_refusal(self.path, self.fence, into=self.into):
                await trio.to_thread.run_sync(move)
            return True
        except (DestinationExistsError, NoSpaceError):
            raise
        except (UserError, RemoteError) as exc:
            log.info("output of %s could not be fetched: %s", peer_id, exc)
            return False
        finally:
            staged.unlink(missing_ok=True)


def _abs_path(params: dict[str, Any], key: str) -> Path:
    value = params.get(key)
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidParamsError(f"parameter {key!r} must be an absolute path")
    return Path(value)


def _number(params: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParamsError(f"parameter {key!r} must be a number from {low:g} to {high:g}")
    return float(value)


def _limits(given: object) -> JobLimits:
    if not isinstance(given, dict):
        raise InvalidParamsError("parameter 'limits' must be a map")
    names = {"fuel": "fuel", "memory": "memory", "wall": "wall_seconds", "output": "max_output"}
    values: dict[str, int] = {}
    for key, value in given.items():
        if key not in names or isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParamsError(f"limit {key!r} is unknown or not an integer")
        values[names[key]] = value
    try:
        return JobLimits(**values)
    except P2PShareError as exc:
        raise UserError(f"invalid job limits: {exc}") from None


def _check_single_file(kind: str, files: int, cid: ContentId) -> None:
    if kind != "file" or files != 1:
        raise JobRejectedError(RejectCode.INVALID_SPEC, f"{cid} is not a single file")


def _check_size(size: int, max_bytes: int | None, cid: ContentId) -> None:
    if max_bytes is not None and size > max_bytes:
        raise JobRejectedError(
            RejectCode.OVERSIZE, f"{cid} has {size} bytes, more than the {max_bytes} allowed"
        )


def _check_job_files(request: _RunRequest, guard: HomeGuard | None) -> None:
    """Refuse a file the user named for the job (the others are content IDs) that
    `share` refuses in the node's home, --yes or not, or that looks like a private key,
    unless --yes: the job sends it to its workers."""
    refs = [request.stdin, *(ref for _, ref in request.inputs)]
    files = [request.module, *(Path(r) for r in refs if r is not None and r.startswith("/"))]
    if guard is not None:
        for path in files:
            guard.check_share_path(path)
    if not request.yes:
        for path in files:
            check_job_file(path)


def _prepare_file(store: ShareStore, path: Path) -> PreparedShare:
    if not path.is_file():
        raise UserError(f"{path} is not a regular file; jobs take single files")
    # The files the user named were checked (_check_job_files); a module built from
    # WAT text is the node's own, in its home.
    return store.prepare(path, confirmed=True)


def _file_digest(path: Path) -> bytes:
    hasher = blake3.blake3()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.digest()


def _worker_doc(worker: Worker) -> dict[str, Any]:
    offer = worker.offer
    return {
        "peer_id": worker.peer_id,
        "addrs": list(worker.addrs),
        "slots": offer.slots,
        "free": offer.free,
        "speed_fuel_per_s": offer.speed,
        "max_fuel": offer.limits.fuel,
        "max_memory": offer.limits.memory,
        "max_wall": offer.limits.wall_seconds,
        "max_output": offer.limits.max_output,
        "max_input": offer.max_input,
        "expires": offer.expires,
    }
