"""What the sandbox runs and returns, and the glue between a job spec and a receipt.

Plain data, importable without wasmtime: the daemon builds :class:`SandboxJob`
values and reads :class:`SandboxResult` values, while only the worker processes
load wasmtime (p2pshare.compute.sandbox).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from p2pshare.errors import LocalProtocolError
from p2pshare.proto.jobspec import MAX_FUEL, JobLimits, JobSpec, job_id
from p2pshare.proto.receipt import JobStatus, Receipt, SignedReceipt, output_digest, sign_receipt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from p2pshare.proto.cid import ContentId
    from p2pshare.proto.signed_manifest import Signer

# The part of stderr kept; stderr is for people reading a failure, not for results.
MAX_STDERR: Final = 64 * 1024

InputSource = bytes | Path


@dataclass(frozen=True)
class SandboxJob:
    """One run: the module, what the guest sees, and the limits.

    ``seed`` keys the guest's random numbers (the job ID).  ``stdin`` and each input
    are either bytes or the path of a regular host file; large data should come as
    paths so it is not copied through memory.  Input paths are guest paths, relative,
    checked like share paths.
    """

    module: bytes
    seed: bytes
    limits: JobLimits = field(default_factory=JobLimits)
    args: tuple[str, ...] = ()
    stdin: InputSource = b""
    inputs: Mapping[str, InputSource] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended.

    ``stdout`` is everything the guest wrote (up to the output limit), ``stderr`` its
    first :data:`MAX_STDERR` bytes.  ``detail`` is one sentence for people and logs,
    not compared between replicas.  ``elapsed`` is the wall time of the run itself,
    in seconds.  For a run stopped by the wall clock ``fuel_used`` is what wasmtime
    reports, which may undercount.
    """

    status: JobStatus
    exit_code: int
    fuel_used: int
    stdout: bytes
    stderr: bytes
    detail: str
    elapsed: float = 0.0

    @property
    def digest(self) -> bytes:
        """BLAKE3 of stdout: what a receipt states and replicas compare."""
        return output_digest(self.stdout)


def refused(status: JobStatus, detail: str) -> SandboxResult:
    """The result of a job that never ran (invalid module, forbidden import, killed)."""
    return SandboxResult(status, 0, 0, b"", b"", detail)


def sandbox_job(
    spec: JobSpec,
    *,
    module: bytes,
    stdin: InputSource = b"",
    inputs: Mapping[str, InputSource] | None = None,
) -> SandboxJob:
    """The run of ``spec`` once its module, stdin and inputs were fetched and verified.

    ``inputs`` must hold exactly the spec's guest paths.  The seed is the job ID, so
    every worker gives the guest the same random bytes.
    """
    inputs = dict(inputs or {})
    if set(inputs) != {entry.path for entry in spec.inputs}:
        raise LocalProtocolError("the inputs given do not match the job spec's input paths")
    if spec.stdin is None and stdin != b"":
        raise LocalProtocolError("the job spec has no stdin")
    return SandboxJob(
        module=module,
        seed=job_id(spec),
        limits=spec.limits,
        args=spec.args,
        stdin=stdin,
        inputs=inputs,
    )


def sign_result(
    spec: JobSpec, result: SandboxResult, worker: Signer, output: ContentId | None
) -> SignedReceipt:
    """The worker's signed receipt for ``result``; ``output`` names the stored stdout."""
    return sign_receipt(
        Receipt(
            job_id=job_id(spec),
            worker=worker.public_key,
            status=result.status,
            exit_code=result.exit_code,
            fuel_used=min(max(result.fuel_used, 0), MAX_FUEL),
            output=output,
            digest=result.digest,
        ),
        worker,
    )
