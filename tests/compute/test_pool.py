"""Worker processes: every limit holds and the same pool serves the next job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from p2pshare.compute.errors import WorkerCrashedError, WorkerStartError
from p2pshare.compute.jobs import SandboxJob
from p2pshare.compute.pool import PoolConfig, WorkerPool, open_worker_pool
from p2pshare.compute.sandbox import Sandbox
from p2pshare.errors import LocalProtocolError
from p2pshare.proto.job import JobState
from p2pshare.proto.jobspec import JobLimits
from p2pshare.proto.receipt import JobStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from p2pshare.compute.sandbox import Sandbox

    Build = Callable[[str], bytes]

SMALL = JobLimits(fuel=10**8, memory=16 * 1024**2, wall_seconds=2, max_output=1024**2)
# Fuel to spare: only the wall clock can stop these.
ENDLESS = JobLimits(fuel=10**15, memory=16 * 1024**2, wall_seconds=1, max_output=1024**2)
SEED = bytes(range(32))
CONFIG = PoolConfig(slots=1, max_memory=64 * 1024**2, max_output=4 * 1024**2, kill_grace=0.75)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    async with open_worker_pool(replace(CONFIG, work_dir=tmp_path)) as pool:
        yield pool


def _scratch_dirs(pool: WorkerPool) -> list[Path]:
    """The work directory's entries: one scratch directory per live worker, no more."""
    assert pool.config.work_dir is not None
    return list(pool.config.work_dir.iterdir())


def _fds(pid: int) -> list[Path]:
    return list(Path(f"/proc/{pid}/fd").iterdir())


def _vm_data(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmData")


async def _serves_a_normal_job(pool: WorkerPool, wasm: Build) -> None:
    result = await pool.run_job(SandboxJob(wasm("wordcount"), SEED, SMALL, stdin=b"a b\nc\n"))
    assert (result.status, result.stdout) == (JobStatus.OK, b"2 3 6\n")


async def test_a_trivial_job_round_trip(pool: WorkerPool, wasm: Build) -> None:
    states: list[JobState] = []
    result = await pool.run_job(
        SandboxJob(wasm("wordcount"), SEED, SMALL, stdin=b"x"), on_state=states.append
    )
    assert (result.status, result.stdout) == (JobStatus.OK, b"0 1 1\n")
    assert states == [JobState.COMPILING, JobState.RUNNING]
    (pid,) = pool.pids
    for _ in range(5):
        await _serves_a_normal_job(pool, wasm)
    assert pool.pids == [pid]
    assert pool.started == 1


async def test_jobs_leave_no_files_or_memory_behind(pool: WorkerPool, wasm: Build) -> None:
    (pid,) = pool.pids
    jobs = [
        SandboxJob(wasm("catfile"), SEED, SMALL, args=("f",), inputs={"f": b"x"}),
        SandboxJob(wasm("membomb"), SEED, SMALL),
        SandboxJob(wasm("flood"), SEED, SMALL),
        SandboxJob(wasm("catfile"), SEED, SMALL, args=("none",)),
    ]
    for job in jobs:  # compiled modules stay cached (with a descriptor each): warm up
        await pool.run_job(job)
    descriptors, data = len(_fds(pid)), _vm_data(pid)
    for _ in range(10):
        for job in jobs:
            await pool.run_job(job)
    # Each job's store, files and linear memory (16 MiB for the bomb) are freed.
    assert len(_fds(pid)) == descriptors
    assert _vm_data(pid) < data + SMALL.memory


HOSTILE: dict[str, tuple[str, JobStatus, bytes]] = {
    "infinite loop (fuel)": ("spin", JobStatus.OUT_OF_FUEL, b""),
    "memory bomb": ("membomb", JobStatus.MEMORY_LIMIT, b""),
    "output flood": ("flood", JobStatus.OUTPUT_LIMIT, b"y\n" * (SMALL.max_output // 2)),
    "stack overflow": ("recurse", JobStatus.STACK_OVERFLOW, b""),
    "forbidden import": ("socket", JobStatus.FORBIDDEN_IMPORT, b""),
    "blocking poll_oneoff": ("sleep", JobStatus.OK, b"poll_oneoff 052\n"),
}


@pytest.mark.parametrize(("name", "status", "stdout"), HOSTILE.values(), ids=HOSTILE.keys())
async def test_limit_holds_and_the_same_worker_serves_the_next_job(
    pool: WorkerPool, wasm: Build, name: str, status: JobStatus, stdout: bytes
) -> None:
    pids = pool.pids
    result = await pool.run_job(SandboxJob(wasm(name), SEED, SMALL))
    assert (result.status, result.stdout) == (status, stdout)
    if status is JobStatus.FORBIDDEN_IMPORT:
        assert "wasi_snapshot_preview1.sock_open" in result.detail
    await _serves_a_normal_job(pool, wasm)
    # The sandbox stopped the job: its worker process did not have to die.
    assert pool.pids == pids


async def test_path_escape_reads_nothing(pool: WorkerPool, wasm: Build) -> None:
    result = await pool.run_job(SandboxJob(wasm("escape"), SEED, SMALL, inputs={"sub/x": b"x"}))
    assert result.status is JobStatus.OK
    assert len(result.stdout.splitlines()) == 5
    assert all(not line.endswith(b" 000") for line in result.stdout.splitlines())
    assert b"root:" not in result.stdout
    await _serves_a_normal_job(pool, wasm)


async def test_not_webassembly_is_invalid(pool: WorkerPool, wasm: Build) -> None:
    result = await pool.run_job(SandboxJob(b"#!/bin/sh\nrm -rf /\n", SEED, SMALL))
    assert result.status is JobStatus.INVALID_MODULE
    await _serves_a_normal_job(pool, wasm)


async def test_infinite_loop_with_fuel_to_spare_times_out(pool: WorkerPool, wasm: Build) -> None:
    pids = pool.pids
    started = trio.current_time()
    result = await pool.run_job(SandboxJob(wasm("spin"), SEED, ENDLESS))
    assert result.status is JobStatus.TIMEOUT
    assert "wall-clock limit" in result.detail
    assert trio.current_time() - started < ENDLESS.wall_seconds + CONFIG.kill_grace
    await _serves_a_normal_job(pool, wasm)
    assert pool.pids == pids  # stopped by the epoch deadline, inside the worker


async def test_a_worker_that_stops_responding_is_killed(pool: WorkerPool, wasm: Build) -> None:
    # SIGSTOP stands for a host call that blocks: the epoch deadline cannot act,
    # only the parent's hard kill can.
    (pid,) = pool.pids

    def freeze(state: JobState) -> None:
        if state is JobState.RUNNING:
            os.kill(pid, signal.SIGSTOP)

    started = trio.current_time()
    result = await pool.run_job(SandboxJob(wasm("spin"), SEED, ENDLESS), on_state=freeze)
    elapsed = trio.current_time() - started
    assert result.status is JobStatus.TIMEOUT
    assert "killed" in result.detail
    assert ENDLESS.wall_seconds + CONFIG.kill_grace <= elapsed < ENDLESS.wall_seconds + 1.75
    await _serves_a_normal_job(pool, wasm)
    assert pid not in pool.pids
    # The killed worker could not remove its job directory; the pool did.
    assert len(_scratch_dirs(pool)) == 1


async def test_a_worker_killed_while_idle_is_replaced(pool: WorkerPool, wasm: Build) -> None:
    (pid,) = pool.pids
    os.kill(pid, signal.SIGKILL)
    await _serves_a_normal_job(pool, wasm)
    assert pid not in pool.pids
    assert pool.started == 2


async def test_a_worker_killed_during_a_job_is_reported_and_replaced(
    pool: WorkerPool, wasm: Build
) -> None:
    (pid,) = pool.pids

    def kill(state: JobState) -> None:
        if state is JobState.RUNNING:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(WorkerCrashedError, match=str(pid)):
        await pool.run_job(SandboxJob(wasm("spin"), SEED, ENDLESS), on_state=kill)
    await _serves_a_normal_job(pool, wasm)
    assert pid not in pool.pids
    assert len(_scratch_dirs(pool)) == 1


async def test_a_worker_over_its_cpu_time_is_a_timeout(pool: WorkerPool, wasm: Build) -> None:
    # What RLIMIT_CPU does when a job outlasts its CPU time: the kernel's SIGXCPU.
    (pid,) = pool.pids

    def exhaust(state: JobState) -> None:
        if state is JobState.RUNNING:
            os.kill(pid, signal.SIGXCPU)

    result = await pool.run_job(SandboxJob(wasm("spin"), SEED, ENDLESS), on_state=exhaust)
    assert result.status is JobStatus.TIMEOUT
    assert "CPU time" in result.detail
    await _serves_a_normal_job(pool, wasm)
    assert pid not in pool.pids


async def test_cancelling_a_job_kills_its_worker(pool: WorkerPool, wasm: Build) -> None:
    (pid,) = pool.pids
    long = JobLimits(fuel=10**15, memory=1 << 20, wall_seconds=60, max_output=1024)
    with trio.move_on_after(0.3) as scope:
        await pool.run_job(SandboxJob(wasm("spin"), SEED, long))
    assert scope.cancelled_caught
    await _serves_a_normal_job(pool, wasm)
    assert pid not in pool.pids


async def test_replicas_on_different_workers_agree(wasm: Build, sandbox: Sandbox) -> None:
    job = SandboxJob(wasm("entropy"), SEED, SMALL)
    results = []
    async with open_worker_pool(PoolConfig(slots=2, max_memory=CONFIG.max_memory)) as pool:
        assert len(pool.pids) == 2

        async def run() -> None:
            results.append(await pool.run_job(job))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
    in_process = sandbox.run(job)
    assert {(result.digest, result.fuel_used) for result in results} == {
        (in_process.digest, in_process.fuel_used)
    }
    assert in_process.status is JobStatus.OK


async def test_large_inputs_travel_as_files_and_leave_nothing_behind(
    wasm: Build, sandbox: Sandbox, tmp_path: Path
) -> None:
    data = os.urandom(4 * 1024**2)
    host_file = tmp_path / "input.bin"
    host_file.write_bytes(b"from the host\n")
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    config = PoolConfig(slots=1, max_memory=CONFIG.max_memory, work_dir=work_dir)
    async with open_worker_pool(config) as pool:
        digest = await pool.run_job(SandboxJob(wasm("fnv1a"), SEED, SMALL, stdin=data))
        copied = await pool.run_job(
            SandboxJob(
                wasm("catfile"),
                SEED,
                SMALL,
                args=("in/host",),
                inputs={"in/host": host_file, "in/big": data},
            )
        )
    assert digest.stdout == sandbox.run(SandboxJob(wasm("fnv1a"), SEED, SMALL, stdin=data)).stdout
    assert copied.stdout == b"from the host\n"
    assert list(work_dir.iterdir()) == []


async def test_limits_above_the_pool_are_refused(pool: WorkerPool, wasm: Build) -> None:
    too_much = JobLimits(memory=CONFIG.max_memory + 65536)
    with pytest.raises(LocalProtocolError):
        await pool.run_job(SandboxJob(wasm("wordcount"), SEED, too_much))


def _proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text(errors="replace")


async def test_workers_are_confined(
    pool: WorkerPool, wasm: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    (pid,) = pool.pids
    await _serves_a_normal_job(pool, wasm)  # a job sets the CPU-time limit
    limits = {
        line[:26].strip(): line[26:].split() for line in _proc(pid, "limits").splitlines()[1:]
    }
    assert limits["Max open files"][:2] == ["128", "128"]
    assert limits["Max core file size"][:2] == ["0", "0"]
    assert limits["Max data size"][0] != "unlimited"
    assert limits["Max address space"][0] != "unlimited"
    assert int(limits["Max data size"][0]) < 1024**3
    assert limits["Max cpu time"][0] != "unlimited"
    assert "NoNewPrivs:\t1" in _proc(pid, "status")
    nice = int(_proc(pid, "stat").rsplit(")", 1)[1].split()[16])
    assert nice == min(19, os.nice(0) + CONFIG.nice)
    # The daemon's environment (tokens, proxies) does not reach the worker.
    monkeypatch.setenv("P2PSHARE_TEST_SECRET", "hunter2")
    os.kill(pid, signal.SIGKILL)
    while pool.pids in ([], [pid]):
        await trio.sleep(0.01)
    (new_pid,) = pool.pids
    assert "hunter2" not in _proc(new_pid, "environ")


async def test_workers_that_cannot_start_are_an_error() -> None:
    with pytest.raises(WorkerStartError):
        async with open_worker_pool(PoolConfig(python="/nonexistent/python3")):
            pass


def test_the_daemon_side_does_not_load_wasmtime() -> None:
    # Only worker processes pay for wasmtime (over 100 ms and tens of MiB).
    code = (
        "import sys, p2pshare.compute.pool, p2pshare.compute.jobs, p2pshare.compute.imports;"
        "assert 'wasmtime' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
