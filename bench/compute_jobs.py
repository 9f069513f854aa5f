"""Compute through daemons: a trivial job's round trip, and a byte-crunching job's throughput.

Two daemon processes on 127.0.0.1, connected: a requester and a worker with one slot.

* Round trip: ``compute run`` of `wordcount` over 12 bytes, one replica, timed from the
  control call to its reply (sharing, finding the worker, its offer, fetching module and
  stdin, running, storing the output, the receipt, fetching the output).  Target: at
  most 250 ms.
* Throughput: `fnv1a` over a file the worker already shares (stdin given by content ID,
  so no input crosses the network), against the same module under plain wasmtime in this
  process (no fuel, no epoch), in the same run.

Run: .venv/bin/python bench/compute_jobs.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from compute import plain_wasmtime
from rows import Row, percentile, print_table

from p2pshare.compute.examples import WAT_DIR, example_module
from p2pshare.control.client import ControlClient
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, start_all

TARGET_ROUND_TRIP_S = 0.25
WORKER = {"enabled": True, "slots": 1}
READY_WAIT = 60.0


def _call(home: Home, method: str, params: dict[str, Any] | None = None) -> Any:
    with ControlClient(home, timeout=300) as client:
        return client.call(method, params)


def _wait_for_worker(home: Home) -> None:
    deadline = time.monotonic() + READY_WAIT
    while time.monotonic() < deadline:
        if any(w["free"] for w in _call(home, "compute_peers", {"timeout": 2})["workers"]):
            return
        time.sleep(0.2)
    raise RuntimeError(f"no worker was ready within {READY_WAIT:g} s")


def _run(home: Home, module: Path, stdin: str, dest: Path) -> dict[str, Any]:
    result: dict[str, Any] = _call(
        home,
        "compute_run",
        {"module": str(module), "stdin": stdin, "dest": str(dest), "force": True},
    )
    if not result["verified"] or result["status"] != "ok":
        raise RuntimeError(f"the job did not succeed: {result}")
    return result


def measure(quick: bool, *, runs: int | None = None, mib: int | None = None) -> list[Row]:
    runs = runs or (5 if quick else 20)
    mib = mib or (16 if quick else 64)
    with tempfile.TemporaryDirectory(prefix="p2pshare-bench-compute-") as tmp:
        root = Path(tmp)
        requester_home, worker_home = Home(root / "requester"), Home(root / "worker")
        init_home(worker_home, compute=WORKER)
        with DaemonProcess(worker_home) as worker:
            start_all([worker])
            init_home(requester_home, bootstrap=(worker.info["addrs"][0],))
            with DaemonProcess(requester_home) as requester:
                start_all([requester])
                _wait_for_worker(requester_home)
                trips, replica_times = _round_trips(root, requester_home, runs)
                job_s, plain_s = _throughput(root, requester_home, worker_home, mib, runs)
                worker.stop()
                requester.stop()
    median_trip = statistics.median(trips)
    job_rate = mib / 1024 / statistics.median(job_s)
    plain_rate = mib / 1024 / statistics.median(plain_s)
    return [
        Row(
            "compute: trivial job round trip, connected worker (median)",
            f"{median_trip * 1000:.0f} ms",
            f"worker's part (submit to receipt) {statistics.median(replica_times) * 1000:.0f} ms",
            f"<= {TARGET_ROUND_TRIP_S * 1000:.0f} ms",
            median_trip <= TARGET_ROUND_TRIP_S,
        ),
        Row(
            "compute: trivial job round trip (p95)",
            f"{percentile(trips, 0.95) * 1000:.0f} ms",
        ),
        Row(
            f"compute: fnv1a over {mib} MiB held by the worker, through the network",
            f"{job_rate:.2f} GiB/s",
            f"plain wasmtime in-process {plain_rate:.2f} GiB/s ({job_rate / plain_rate:.2f}x)",
        ),
    ]


def _round_trips(root: Path, home: Home, runs: int) -> tuple[list[float], list[float]]:
    text = root / "words.txt"
    text.write_bytes(b"hello world\n")
    module = WAT_DIR / "wordcount.wat"
    _run(home, module, str(text), root / "warm.out")
    trips, replica_times = [], []
    for index in range(runs):
        began = time.perf_counter()
        result = _run(home, module, str(text), root / f"count-{index}.out")
        trips.append(time.perf_counter() - began)
        replica_times.append(result["workers"][0]["elapsed_s"])
    return trips, replica_times


def _throughput(
    root: Path, requester: Home, worker: Home, mib: int, runs: int
) -> tuple[list[float], list[float]]:
    data = root / "data.bin"
    with data.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    cid = _call(worker, "share", {"path": str(data)})["cid"]
    module = root / "fnv1a.wasm"
    module.write_bytes(example_module("fnv1a"))
    job_s = []
    for index in range(max(3, runs // 4)):
        began = time.perf_counter()
        result = _run(requester, module, cid, root / f"hash-{index}.out")
        job_s.append(time.perf_counter() - began)
        # Only the module (a few hundred bytes) may cross the network.
        if result["input_bytes_moved"] >= 1 << 20:
            raise RuntimeError("the worker fetched input it already holds")
    return job_s, plain_wasmtime(module.read_bytes(), data, max(3, runs // 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--mib", type=int)
    args = parser.parse_args()
    print_table(measure(args.quick, runs=args.runs, mib=args.mib))


if __name__ == "__main__":
    main()
