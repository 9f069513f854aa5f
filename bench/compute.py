"""Compute benchmark: a trivial job's round trip through the worker pool, and throughput.

* Round trip: `wordcount` of a few bytes through a pre-started pool (compiled module
  cached in the worker), from ``run_job`` to the result; and the same job run
  in-process on a warm Sandbox, which is the floor.
* Throughput: `fnv1a` over 16 MiB of stdin (one xor and one multiply per byte, all in
  WebAssembly) through the pool, against the same module in-process with the same
  sandbox settings, and against plain wasmtime (no fuel, no epoch) in the same run.

Not collected by pytest (no test_ prefix).  Run:
    .venv/bin/python tests/compute/bench_compute.py [--runs N] [--mib M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio
import wasmtime
from rows import Row

from p2pshare.compute.examples import WAT_DIR
from p2pshare.compute.jobs import SandboxJob
from p2pshare.compute.pool import PoolConfig, open_worker_pool
from p2pshare.compute.sandbox import Sandbox
from p2pshare.proto.jobspec import JobLimits
from p2pshare.proto.receipt import JobStatus

EXAMPLES = WAT_DIR
SEED = bytes(32)
LIMITS = JobLimits(fuel=10**11, memory=64 * 1024**2, wall_seconds=60, max_output=1024**2)


def _build(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((EXAMPLES / f"{name}.wat").read_text()))


def _summary(label: str, samples: list[float], mib: float | None = None) -> str:
    median, best = statistics.median(samples), min(samples)
    text = f"{label:<46} median {median * 1000:8.2f} ms   best {best * 1000:8.2f} ms"
    if mib is not None:
        text += f"   {mib / median / 1024:5.2f} GiB/s (median)"
    return text


def plain_wasmtime(module: bytes, stdin: Path, runs: int) -> list[float]:
    """The module under wasmtime's defaults: no fuel, no epoch, real WASI stdout."""
    engine = wasmtime.Engine()
    compiled = wasmtime.Module(engine, module)
    samples = []
    for _ in range(runs):
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.stdin_file = str(stdin)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, compiled)
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        began = time.perf_counter()
        start(store)
        samples.append(time.perf_counter() - began)
    return samples


async def _pool_samples(jobs: list[SandboxJob], runs: int) -> list[list[float]]:
    config = PoolConfig(slots=1, max_memory=LIMITS.memory, max_output=LIMITS.max_output)
    results: list[list[float]] = [[] for _ in jobs]
    async with open_worker_pool(config) as pool:
        for samples, job in zip(results, jobs, strict=True):
            await pool.run_job(job)  # compile and cache in the worker
            for _ in range(runs):
                began = time.perf_counter()
                result = await pool.run_job(job)
                samples.append(time.perf_counter() - began)
                assert result.status is JobStatus.OK, result.detail
    return results


@dataclass
class Samples:
    """Seconds per run of each variant, from one run of the benchmark."""

    runs: int
    mib: int
    pool_trivial: list[float]
    local_trivial: list[float]
    pool_file: list[float]
    pool_bytes: list[float]
    local_file: list[float]
    local_run: list[float]
    plain: list[float]
    fuel: int


def collect(runs: int, mib: int) -> Samples:
    wordcount, fnv1a = _build("wordcount"), _build("fnv1a")
    data = os.urandom(mib * 1024**2)
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        stdin = Path(tmp) / "stdin"
        stdin.write_bytes(data)
        trivial = SandboxJob(wordcount, SEED, LIMITS, stdin=b"hello world\n")
        crunch_file = SandboxJob(fnv1a, SEED, LIMITS, stdin=stdin)
        crunch_bytes = SandboxJob(fnv1a, SEED, LIMITS, stdin=data)

        pool_trivial, pool_file, pool_bytes = trio.run(
            _pool_samples, [trivial, crunch_file, crunch_bytes], runs
        )
        with Sandbox() as sandbox:
            sandbox.run(trivial)
            local_trivial, local_file, local_run = [], [], []
            for _ in range(runs):
                began = time.perf_counter()
                sandbox.run(trivial)
                local_trivial.append(time.perf_counter() - began)
                began = time.perf_counter()
                result = sandbox.run(crunch_file)
                local_file.append(time.perf_counter() - began)
                local_run.append(result.elapsed)
            fuel = result.fuel_used
        plain = plain_wasmtime(fnv1a, stdin, runs)
    return Samples(
        runs,
        mib,
        pool_trivial,
        local_trivial,
        pool_file,
        pool_bytes,
        local_file,
        local_run,
        plain,
        fuel,
    )


def measure(quick: bool, *, runs: int | None = None, mib: int | None = None) -> list[Row]:
    """Rows for bench/run.py. No targets are set for compute yet: context only."""
    s = collect(runs or (5 if quick else 20), mib or (4 if quick else 16))
    ms = statistics.median

    def rate(samples: list[float]) -> str:
        return f"{s.mib / ms(samples):.1f} MiB/s"

    return [
        Row(
            f"compute: trivial job round trip through the worker pool, median of {s.runs}",
            f"{ms(s.pool_trivial) * 1000:.2f} ms",
            f"in-process Sandbox.run {ms(s.local_trivial) * 1000:.2f} ms",
        ),
        Row(
            f"compute: fnv1a over {s.mib} MiB through the pool (stdin as a file)",
            rate(s.pool_file),
            f"in-process {rate(s.local_file)}; plain wasmtime {rate(s.plain)}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    s = collect(args.runs, args.mib)
    print(f"runs: {s.runs}, stdin: {s.mib} MiB, cpus: {os.cpu_count()}")
    print(_summary("trivial job, pool round trip", s.pool_trivial))
    print(_summary("trivial job, in-process Sandbox.run", s.local_trivial))
    print(_summary("fnv1a, pool, stdin as a file", s.pool_file, s.mib))
    print(_summary("fnv1a, pool, stdin as bytes (spilled)", s.pool_bytes, s.mib))
    print(_summary("fnv1a, in-process Sandbox.run (whole job)", s.local_file, s.mib))
    print(_summary("fnv1a, in-process, wasm execution only", s.local_run, s.mib))
    print(_summary("fnv1a, plain wasmtime (no fuel, no epoch)", s.plain, s.mib))
    print(f"fuel used by fnv1a over {s.mib} MiB: {s.fuel}")
    ratio = statistics.median(s.pool_file) / statistics.median(s.local_file)
    print(f"pool / in-process (same sandbox settings): {ratio:.2f}x the time")
    ratio = statistics.median(s.pool_file) / statistics.median(s.plain)
    print(f"pool / plain wasmtime: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
