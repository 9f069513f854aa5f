"""The requester side of compute: share a job, choose workers, run replicas, conclude.

:class:`Requester` is what ``compute_run`` does, step by step:

1. share the module (assembled from WAT text if need be), the stdin and the inputs;
2. choose workers: find them in the DHT, ask their offers (:mod:`.workers`), and
   rank those able to take the job, the ones holding its inputs first;
3. run the replicas (:mod:`.replicas`) while telling the client how they go;
4. compare the receipts and fetch the output of one that agrees with the majority.

Everything it needs of the node comes in as callables (sharing, finding peers and
content holders, opening streams) and an :class:`Output`, which applies the rules of
``-o``; ``node/compute_api.py`` only wires them.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import blake3
import trio

from p2pshare.compute.errors import JobFailedError
from p2pshare.compute.imports import MAX_MODULE_SIZE
from p2pshare.compute.replicas import JobWatch, Replica, compare
from p2pshare.compute.workers import Worker, collect_offers, rank_workers, too_few_workers
from p2pshare.errors import P2PShareError, UserError
from p2pshare.proto.job import NONCE_SIZE, Submit
from p2pshare.proto.jobspec import JobLimits, JobSpec, build_job_spec
from p2pshare.proto.receipt import JobStatus, output_digest
from p2pshare.proto.ticket import parse_content_ref

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.compute.workers import OpenStream
    from p2pshare.control.server import Emit
    from p2pshare.proto.cid import ContentId

    # Shares a local file; its content ID, and whether this call shared it (it is
    # then unshared when the run ends).
    Share: TypeAlias = Callable[[Path], Awaitable[tuple[ContentId, bool]]]
    # Peers announcing a key: up to ``want`` of (peer ID, addresses), within ``timeout``.
    FindWorkers: TypeAlias = Callable[[int, float], Awaitable[list[tuple[str, tuple[str, ...]]]]]
    # Peer IDs providing a content ID, within ``timeout``.
    FindHolders: TypeAlias = Callable[[ContentId, float], Awaitable[list[str]]]

log = logging.getLogger(__name__)

MAX_REPLICAS: Final = 16
# Workers asked for an offer per job: enough to replace a few busy ones.
CANDIDATES_PER_REPLICA: Final = 4
WASM_MAGIC: Final = b"\0asm"


class Output(Protocol):
    """The destination of a job's output, kept by the rules of ``-o``.

    Errors of the destination itself (it exists, the disk is full) are the user's to
    fix and end the run; :meth:`fetch` returns False for a replica's output that
    cannot be had or does not match ``digest``.
    """

    @property
    def path(self) -> Path: ...

    async def write(self, data: bytes) -> None: ...

    async def fetch(self, cid: ContentId, peer_id: str, digest: bytes) -> bool: ...


@dataclass(frozen=True)
class JobRequest:
    """What the user asked to run: local paths or content refs, and how many replicas."""

    module: Path
    stdin: str | None
    inputs: list[tuple[str, str]]
    args: list[str]
    limits: JobLimits
    replicas: int


@dataclass
class Requester:
    share: Share
    unshare: Callable[[str], object]
    # Bytes of a content ID this node holds, 0 if none (the input a worker must fetch).
    local_size: Callable[[ContentId], int]
    find_workers: FindWorkers
    find_holders: FindHolders
    open_stream: OpenStream
    modules_dir: Path
    find_timeout: float

    async def workers(self, want: int, timeout: float) -> tuple[list[Worker], dict[str, str]]:
        """Up to ``want`` workers with their offers, and why the others could not answer."""
        return await collect_offers(self.open_stream, await self.find_workers(want, timeout))

    async def run(self, request: JobRequest, output: Output, emit: Emit) -> dict[str, Any]:
        """Run the job on ``request.replicas`` workers; the report ``compute_run`` returns."""
        started = time.monotonic()
        created: list[str] = []
        try:
            await emit("progress", {"phase": "sharing"})
            module_file = await trio.to_thread.run_sync(self._module_file, request.module)
            module = await self._share_file(module_file, created)
            spec = await self._spec(request, module, created)
            await emit("progress", {"phase": "finding", "job_id": spec.job_id.hex()})
            workers = await self._choose(spec, request.replicas, created)
            submit = Submit(spec, secrets.token_bytes(NONCE_SIZE))
            watch = JobWatch(emit, spec.job_id)
            replicas = await watch.run_replicas(self.open_stream, workers, submit, request.replicas)
            doc = await self._conclude(spec.job_id, replicas, request.replicas, output, emit)
        finally:
            with trio.CancelScope(shield=True):
                for cid in created:
                    self.unshare(cid)
        doc["module"] = str(module)
        doc["elapsed_s"] = round(time.monotonic() - started, 3)
        return doc

    async def _spec(self, request: JobRequest, module: ContentId, created: list[str]) -> JobSpec:
        stdin = None if request.stdin is None else await self._ref(request.stdin, created)
        inputs = {guest: await self._ref(ref, created) for guest, ref in request.inputs}
        try:
            return build_job_spec(
                module, args=request.args, stdin=stdin, inputs=inputs, limits=request.limits
            )
        except P2PShareError as exc:
            raise UserError(f"cannot build the job: {exc}") from None

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
        self.modules_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        built = self.modules_dir / f"{path.stem}-{blake3.blake3(wasm).hexdigest()[:16]}.wasm"
        if not built.exists():
            built.write_bytes(wasm)
        return built

    async def _share_file(self, path: Path, created: list[str]) -> ContentId:
        cid, shared_now = await self.share(path)
        if shared_now:
            created.append(str(cid))
        return cid

    async def _ref(self, ref: str, created: list[str]) -> ContentId:
        if ref.startswith("/"):
            return await self._share_file(Path(ref), created)
        return parse_content_ref(ref)[0]

    async def _choose(self, spec: JobSpec, replicas: int, created: list[str]) -> list[Worker]:
        want = replicas * CANDIDATES_PER_REPLICA
        workers, failures = await self.workers(want, self.find_timeout)
        holdings = await self._holdings(spec, created)
        input_bytes = sum(
            self.local_size(cid)
            for cid in [spec.module, spec.stdin, *(e.cid for e in spec.inputs)]
            if cid is not None
        )
        able, unable = rank_workers(workers, spec.limits, input_bytes, holdings)
        if len(able) < replicas:
            raise JobFailedError(too_few_workers(replicas, len(able), unable, failures))
        return able

    async def _holdings(self, spec: JobSpec, created: list[str]) -> dict[str, int]:
        """How many of the job's inputs each peer already provides (shared elsewhere)."""
        cids = [e.cid for e in spec.inputs] + ([spec.stdin] if spec.stdin is not None else [])
        counts: dict[str, int] = {}

        async def holders(cid: ContentId) -> None:
            for peer_id in await self.find_holders(cid, self.find_timeout):
                counts[peer_id] = counts.get(peer_id, 0) + 1

        async with trio.open_nursery() as nursery:
            for cid in cids:
                if str(cid) not in created:
                    nursery.start_soon(holders, cid)
        return counts

    async def _conclude(
        self, job: bytes, replicas: list[Replica], asked: int, output: Output, emit: Emit
    ) -> dict[str, Any]:
        verdict = compare(replicas)
        done = [r for r in replicas if r.receipt is not None]
        doc: dict[str, Any] = {
            "job_id": job.hex(),
            "replicas": asked,
            # Every replica asked must agree, and timeouts do not count (JobStatus.is_evidence).
            "verified": verdict.agreed and len(verdict.majority) >= asked,
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
        for replica in (r for r in done if r.peer_id in verdict.majority):
            if await _fetch_output(replica, digest, output):
                doc["output"] = str(output.path)
                doc["output_size"] = output.path.stat().st_size
                doc["output_from"] = replica.peer_id
                return doc
            doc["dissenters"].append(replica.peer_id)
            doc["verified"] = False
        return doc


async def _fetch_output(replica: Replica, digest: bytes, output: Output) -> bool:
    """Put a replica's output at the destination; False if it cannot be had or differs."""
    if replica.stdout is not None:
        # Sent with the receipt and checked against its digest when decoded.
        await output.write(replica.stdout)
        return True
    receipt = replica.receipt
    if receipt is None or receipt.output is None:
        return False
    return await output.fetch(receipt.output, replica.peer_id, digest)
