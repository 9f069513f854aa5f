"""Compute on a node: the worker service's wiring and the ``compute_*`` control methods.

* ``compute_offer`` shows this node's offer and changes it while the daemon runs;
* ``compute_peers`` finds workers through the DHT and lists their signed offers;
* ``compute_run`` shares a job's module and inputs, runs it on k workers, compares
  their receipts and fetches the verified output.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import blake3
import trio

from p2pshare.compute.imports import MAX_MODULE_SIZE
from p2pshare.compute.requester import (
    Replica,
    Worker,
    collect_offers,
    compare,
    rank_workers,
    run_replicas,
    too_few_workers,
)
from p2pshare.compute.service import ComputeService, Fetched
from p2pshare.config import check_changes
from p2pshare.control.server import Emit, Handler, InvalidParamsError, umask_param
from p2pshare.errors import P2PShareError, RemoteError, UserError
from p2pshare.modes import file_mode
from p2pshare.node.job_outputs import JobOutputs
from p2pshare.node.timeouts import WORKER_FIND_TIMEOUT, WORKER_OPEN_TIMEOUT
from p2pshare.proto.cid import ContentId
from p2pshare.proto.job import NONCE_SIZE, PROTOCOL_ID, JobRejectedError, RejectCode, Submit
from p2pshare.proto.jobspec import JobLimits, JobSpec, build_job_spec
from p2pshare.proto.offer import COMPUTE_KEY
from p2pshare.proto.receipt import JobStatus, output_digest
from p2pshare.proto.ticket import parse_content_ref
from p2pshare.transfer.destination import (
    DestinationExistsError,
    NoSpaceError,
    check_destination,
    place,
    staging_path,
    write_file,
)
from p2pshare.transfer.downloader import Source
from p2pshare.transfer.failures import ContentTooLargeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pshare.compute.requester import OpenStream
    from p2pshare.config import ComputeConfig
    from p2pshare.identity import NodeKey
    from p2pshare.net.network import Network
    from p2pshare.net.streams import ByteStream, LibP2PStream
    from p2pshare.node.discovery import Discovery
    from p2pshare.node.transfer_api import TransferApi
    from p2pshare.proto.cid import ContentId
    from p2pshare.store.shares import PreparedShare, ShareStore

log = logging.getLogger(__name__)

MAX_REPLICAS: Final = 16
# Workers asked for an offer per job: enough to replace a few busy ones.
CANDIDATES_PER_REPLICA: Final = 4
WASM_MAGIC: Final = b"\0asm"
# Seconds between progress events while replicas run (see _JobWatch.heartbeat).
HEARTBEAT_INTERVAL: Final = 1.0


class JobFailedError(UserError):
    """Every worker asked refused or failed, or too few could be found."""


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
        workers, failures = await self._workers(int(_number(params, "limit", 20, 1, 100)), timeout)
        return {
            "workers": [_worker_doc(w) for w in workers],
            "unreachable": [{"peer_id": p, "error": e} for p, e in sorted(failures.items())],
        }

    async def _workers(self, want: int, timeout: float) -> tuple[list[Worker], dict[str, str]]:
        found = await self.discovery.find_key(COMPUTE_KEY, timeout, want)
        candidates = [(p.peer_id, p.addrs) for p in found if p.peer_id != self._me]
        return await collect_offers(self._open, candidates)

    async def run(self, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        request = _RunRequest.parse(params, self.transfer.daemon_umask)
        started = time.monotonic()
        created: list[str] = []
        try:
            await emit("progress", {"phase": "sharing"})
            module_file = await trio.to_thread.run_sync(self._module_file, request.module)
            module = await self._share_file(module_file, created)
            stdin = None if request.stdin is None else await self._ref(request.stdin, created)
            inputs = {guest: await self._ref(ref, created) for guest, ref in request.inputs}
            try:
                spec = build_job_spec(
                    module, args=request.args, stdin=stdin, inputs=inputs, limits=request.limits
                )
            except P2PShareError as exc:
                raise UserError(f"cannot build the job: {exc}") from None
            await emit("progress", {"phase": "finding", "job_id": spec.job_id.hex()})
            workers = await self._choose(spec, request.replicas, created)
            submit = Submit(spec, secrets.token_bytes(NONCE_SIZE))
            watch = _JobWatch(emit, spec.job_id)
            replicas = await watch.run_replicas(self._open, workers, submit, request.replicas)
            doc = await self._conclude(spec.job_id, replicas, request, emit)
        finally:
            with trio.CancelScope(shield=True):
                for cid in created:
                    self.store.remove(cid)
        doc["module"] = str(module)
        doc["elapsed_s"] = round(time.monotonic() - started, 3)
        return doc

    # -- compute_run, step by step

    def _module_file(self, path: Path) -> Path:
        """The module to share: ``path`` itself, or the module assembled from WAT text."""
        try:
            with path.open("rb") as f:
                head = f.read(len(WASM_MAGIC))
            size = path.stat().st_size
        except OSError as exc:
            raise UserError(f"cannot read the module {path}: {exc.strerror}") from None
        if head == WASM_MAGIC:
            if size > MAX_MODULE_SIZE:
                raise UserError(
                    f"the module {path} has {size} bytes; workers take at most {MAX_MODULE_SIZE}"
                )
            return path
        if path.suffix != ".wat":
            raise UserError(
                f"{path} is not WebAssembly (no \\0asm header); give a .wasm module "
                "built for wasm32-wasip1, or WAT text in a .wat file"
            )
        from p2pshare.compute.examples import wat_to_wasm  # noqa: PLC0415 - imports wasmtime

        try:
            wasm = wat_to_wasm(path.read_text(encoding="utf-8", errors="replace"))
        except ValueError as exc:
            raise UserError(f"{path} is not valid WAT: {exc}") from None
        modules_dir = self.compute_dir / "modules"
        modules_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        built = modules_dir / f"{path.stem}-{blake3.blake3(wasm).hexdigest()[:16]}.wasm"
        if not built.exists():
            built.write_bytes(wasm)
        return built

    async def _share_file(self, path: Path, created: list[str]) -> ContentId:
        prepared = await trio.to_thread.run_sync(_prepare_file, self.store, path)
        cid = str(prepared.signed.cid)
        if self.store.catalog.share(cid) is None:
            self.store.commit(prepared)
            created.append(cid)
        return prepared.signed.cid

    async def _ref(self, ref: str, created: list[str]) -> ContentId:
        if ref.startswith("/"):
            return await self._share_file(Path(ref), created)
        return parse_content_ref(ref)[0]

    async def _choose(self, spec: JobSpec, replicas: int, created: list[str]) -> list[Worker]:
        want = replicas * CANDIDATES_PER_REPLICA
        workers, failures = await self._workers(want, WORKER_FIND_TIMEOUT)
        holdings = await self._holdings(spec, created)
        input_bytes = await self._input_bytes(spec)
        able, unable = rank_workers(workers, spec.limits, input_bytes, holdings)
        if len(able) < replicas:
            raise JobFailedError(too_few_workers(replicas, len(able), unable, failures))
        return able

    async def _holdings(self, spec: JobSpec, created: list[str]) -> dict[str, int]:
        """How many of the job's inputs each peer already provides (shared elsewhere)."""
        cids = [e.cid for e in spec.inputs] + ([spec.stdin] if spec.stdin is not None else [])
        counts: dict[str, int] = {}

        async def holders(cid: ContentId) -> None:
            for provider in await self.discovery.find(str(cid), WORKER_FIND_TIMEOUT):
                counts[provider.peer_id] = counts.get(provider.peer_id, 0) + 1

        async with trio.open_nursery() as nursery:
            for cid in cids:
                if str(cid) not in created:
                    nursery.start_soon(holders, cid)
        return counts

    async def _input_bytes(self, spec: JobSpec) -> int:
        total = 0
        for cid in [spec.module, spec.stdin, *(e.cid for e in spec.inputs)]:
            row = None if cid is None else self.store.catalog.share(str(cid))
            total += 0 if row is None else row.total_size
        return total

    async def _conclude(
        self, job: bytes, replicas: list[Replica], request: _RunRequest, emit: Emit
    ) -> dict[str, Any]:
        verdict = compare(replicas)
        done = [r for r in replicas if r.receipt is not None]
        doc: dict[str, Any] = {
            "job_id": job.hex(),
            "replicas": request.replicas,
            # Every replica asked must agree, and timeouts do not count (JobStatus.is_evidence).
            "verified": verdict.agreed and len(verdict.majority) >= request.replicas,
            "dissenters": list(verdict.dissenters),
            "input_bytes_moved": sum(r.fetched_bytes for r in done),
            "workers": [r.as_dict() | {"agrees": r.peer_id in verdict.majority} for r in replicas],
            "output": None,
        }
        if not done:
            reasons = "; ".join(f"{r.peer_id}: {r.refused}" for r in replicas)
            raise JobFailedError(f"no worker finished the job ({reasons or 'none tried'})")
        if verdict.outcome is None:
            # No dissent and no outcome: every receipt was a timeout, which says so.
            statuses = {r.receipt.status.value for r in done if r.receipt is not None}
            single = len(statuses) == 1 and not verdict.dissenters
            doc["status"] = statuses.pop() if single else None
            return doc
        status, exit_code, digest = verdict.outcome
        doc |= {"status": status.value, "exit_code": exit_code, "digest": digest.hex()}
        if status is not JobStatus.OK and digest == output_digest(b""):
            # A failed job that printed nothing leaves no empty file behind.
            return doc
        await emit("progress", {"phase": "fetching_output", "job_id": job.hex()})
        for replica in done:
            if replica.peer_id not in verdict.majority:
                continue
            if await self._fetch_output(replica, digest, request):
                doc["output"] = str(request.dest)
                doc["output_size"] = request.dest.stat().st_size
                doc["output_from"] = replica.peer_id
                return doc
            doc["dissenters"].append(replica.peer_id)
            doc["verified"] = False
        return doc

    async def _fetch_output(self, replica: Replica, digest: bytes, request: _RunRequest) -> bool:
        """Fetch a replica's stored stdout to the destination; False if it does not match.

        The output is staged under a fresh hidden name next to the destination and put
        in place by the rules of ``-o`` (transfer/destination.py); whatever fails, the
        staged file is removed.  A destination refused, or a disk too small, is the
        user's to fix, not the replica's fault: that error ends the run.
        """
        receipt = replica.receipt
        assert receipt is not None
        if replica.stdout is not None:
            # Sent with the receipt and checked against its digest when decoded.
            write = partial(
                write_file,
                request.dest,
                replica.stdout,
                force=request.force,
                mode=file_mode(request.umask),
            )
            await trio.to_thread.run_sync(write)
            return True
        if receipt.output is None:
            return False
        staged = staging_path(request.dest)
        try:
            await self.transfer.fetch(
                receipt.output, staged, hints=[Source(replica.peer_id)], max_bytes=None
            )
            data_digest = await trio.to_thread.run_sync(_file_digest, staged)
            if data_digest != digest:
                log.warning("%s stored an output that differs from its receipt", replica.peer_id)
                return False
            await trio.to_thread.run_sync(staged.chmod, file_mode(request.umask))
            move = partial(place, staged, request.dest, force=request.force)
            await trio.to_thread.run_sync(move)
            return True
        except (DestinationExistsError, NoSpaceError):
            raise
        except (UserError, RemoteError) as exc:
            log.info("output of %s could not be fetched: %s", replica.peer_id, exc)
            return False
        finally:
            staged.unlink(missing_ok=True)

    def handlers(self) -> dict[str, Handler]:
        return {
            "compute_offer": self.offer,
            "compute_peers": self.peers,
            "compute_run": self.run,
            "compute_outputs": self.outputs.list,
        }


@dataclass
class _JobWatch:
    """What compute_run tells its client while the replicas run.

    Each replica's changes, and a heartbeat, go out as ``running`` progress events;
    replicas report at once, but the control stream takes one event at a time.
    """

    emit: Emit
    job: bytes
    _emitting: trio.Lock = field(default_factory=trio.Lock, init=False)

    async def run_replicas(
        self, open_stream: OpenStream, workers: Sequence[Worker], submit: Submit, replicas: int
    ) -> list[Replica]:
        """:func:`run_replicas`, watched; a refusal of the job itself is a JobFailedError."""
        refused: JobRejectedError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.heartbeat)
            try:
                done = await run_replicas(open_stream, workers, submit, replicas, self.on_update)
            except JobRejectedError as exc:
                # Raised inside the nursery it would come out wrapped in an ExceptionGroup.
                refused = exc
            nursery.cancel_scope.cancel()
        if refused is not None:
            raise JobFailedError(f"the job was refused: {refused}")
        return done

    async def on_update(self, replica: Replica) -> None:
        await self._running({"worker": replica.as_dict()})

    async def heartbeat(self) -> None:
        # The control server sees its client go away (Ctrl-C) only when it sends:
        # a word every second ends the job, and CANCELs it on the workers, at once.
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._running({})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise JobFailedError("the client went away; job cancelled") from None

    async def _running(self, extra: dict[str, Any]) -> None:
        async with self._emitting:
            await self.emit("progress", {"phase": "running", "job_id": self.job.hex()} | extra)


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

    @classmethod
    def parse(cls, params: dict[str, Any], default_umask: int) -> _RunRequest:
        module, dest = _abs_path(params, "module"), _abs_path(params, "dest")
        force = params.get("force", False)
        if not isinstance(force, bool):
            raise InvalidParamsError("parameter 'force' must be true or false")
        check_destination(dest, force=force)
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
        )


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


def _prepare_file(store: ShareStore, path: Path) -> PreparedShare:
    if not path.is_file():
        raise UserError(f"{path} is not a regular file; jobs take single files")
    return store.prepare(path)


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
