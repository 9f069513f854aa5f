"""Every benchmark in one go, one table: figure | value | same-run baseline | target | met?

Runs, in this order: share import, transfer, CLI latency, new-stream cost, DHT (loopback
and, where the machine allows, network namespaces with a 20 ms round trip), many
downloaders (with the seeder's upload free, then capped as a home uplink would cap it), compute
(worker pool in-process) and compute through daemons (bench/compute_jobs.py).
Each benchmark module exposes ``measure(quick) -> list[Row]`` (bench/rows.py); a new
figure only has to be added to its module's rows. A benchmark that fails is reported
as a row saying so; the others still run.

Run: .venv/bin/python bench/run.py [--quick] [--only dht,downloaders] [--out FILE]
     --quick: a few minutes (smaller files, 10 nodes, 20 downloaders);
     full: about 40-55 minutes on an otherwise idle 2-core VM (far longer under load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import cli_latency
import compute
import compute_jobs
import dht
import downloaders
import share_import
import streams
import transfer
from rows import Row, table

if TYPE_CHECKING:
    from collections.abc import Callable

BENCHMARKS: dict[str, Callable[[bool], list[Row]]] = {
    "share_import": share_import.measure,
    "transfer": transfer.measure,
    "cli_latency": cli_latency.measure,
    "streams": streams.measure,
    "dht": dht.measure,
    "downloaders": downloaders.measure,
    "downloaders_capped": downloaders.measure_capped,
    "compute": compute.measure,
    "compute_jobs": compute_jobs.measure,
}


def machine() -> str:
    """CPU count and model, RAM, kernel and Python: the context every figure needs."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        ram = f"{kib / 1024**2:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        ram = "RAM unknown"
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    parser.add_argument("--only", default=None, help=f"comma-separated of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    began = time.time()
    # Other work on the machine skews every figure; the load average says how much.
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            found = BENCHMARKS[name](args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the rest
            traceback.print_exc()
            found = [Row(name, f"failed: {type(exc).__name__}: {exc}", met=False)]
        rows += found
        print(table(found), file=sys.stderr, flush=True)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    header = (
        f"bench/run.py{' --quick' if args.quick else ''}, {stamp}, "
        f"{(time.time() - began) / 60:.1f} min; {machine()}; load average (1 min) "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    text = f"{header}\n\n{table(rows)}"
    print(text, flush=True)
    if args.out is not None:
        args.out.write_text(text + "\n")
    unmet = [r.figure for r in rows if r.met is False]
    if unmet:
        print(f"\n{len(unmet)} target(s) not met", flush=True)


if __name__ == "__main__":
    main()
