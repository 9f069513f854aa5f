"""From a job spec to a sandbox run to a signed receipt, and replicas comparing receipts."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import blake3
import pytest

from p2pshare.compute.jobs import sandbox_job, sign_result
from p2pshare.errors import IntegrityError, LocalProtocolError
from p2pshare.identity import NodeKey
from p2pshare.proto.cid import ContentId
from p2pshare.proto.jobspec import JobLimits, build_job_spec, job_id
from p2pshare.proto.receipt import JobStatus, output_digest, verify_receipt

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.compute.sandbox import Sandbox

LIMITS = JobLimits(fuel=10**8, memory=16 * 1024**2, wall_seconds=2, max_output=1024**2)


def _cid(data: bytes) -> ContentId:
    return ContentId(blake3.blake3(data).digest())


def test_replicas_agree_and_a_lying_worker_is_caught(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> None:
    module, text = wasm("catfile"), b"to be copied\n"
    spec = build_job_spec(
        _cid(module), args=["in/text"], inputs={"in/text": _cid(text)}, limits=LIMITS
    )
    job = sandbox_job(spec, module=module, inputs={"in/text": text})
    assert job.seed == job_id(spec)
    workers = [NodeKey.from_seed(bytes([index]) * 32) for index in range(3)]
    receipts = []
    for worker in workers:
        result = sandbox.run(job)
        assert (result.status, result.stdout) == (JobStatus.OK, text)
        signed = sign_result(spec, result, worker, output=_cid(worker.public_key))
        receipts.append(verify_receipt(signed.data, worker=worker.public_key, job=job_id(spec)))
    assert len({signed.receipt.outcome for signed in receipts}) == 1
    # A worker that claims another output signs a receipt that verifies (it is its
    # own claim) but disagrees with the others.
    honest = sandbox.run(job)
    lie = sign_result(spec, replace(honest, stdout=b"forged\n"), workers[0], None)
    assert lie.receipt.digest == output_digest(b"forged\n")
    assert lie.receipt.outcome != receipts[1].receipt.outcome
    # Nor can one worker's receipt pass as another's.
    with pytest.raises(IntegrityError):
        verify_receipt(receipts[0].data, worker=workers[1].public_key)


def test_a_run_needs_exactly_the_spec_inputs(wasm: Callable[[str], bytes]) -> None:
    module = wasm("catfile")
    spec = build_job_spec(_cid(module), inputs={"a": _cid(b"a")}, limits=LIMITS)
    with pytest.raises(LocalProtocolError):
        sandbox_job(spec, module=module, inputs={})
    with pytest.raises(LocalProtocolError):
        sandbox_job(spec, module=module, inputs={"a": b"a", "b": b"b"})
    with pytest.raises(LocalProtocolError):
        sandbox_job(spec, module=module, stdin=b"no stdin in the spec", inputs={"a": b"a"})


def test_exit_status_reaches_the_receipt(sandbox: Sandbox, wasm: Callable[[str], bytes]) -> None:
    module = wasm("catfile")
    spec = build_job_spec(_cid(module), limits=LIMITS)  # no argument: exits 2
    result = sandbox.run(sandbox_job(spec, module=module))
    signed = sign_result(spec, result, NodeKey.from_seed(bytes(32)), None)
    assert (signed.receipt.status, signed.receipt.exit_code) == (JobStatus.EXIT, 2)
