"""Wall time of `p2pshare --help` and `p2pshare id` against a running daemon.

Baseline, measured in the same run: the bare interpreter (`python -c pass`) and
`python -c "import libp2p"`, which is what every query would pay if the CLI
imported libp2p.  Target: each command's median under a quarter of the libp2p import.

Run: .venv/bin/python bench/cli_latency.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rows import Row, print_table

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, cli_command, init_home


def timed(argv: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), max(samples)


# Our own bar, not one from the design brief: a query must cost well under a quarter
# of what importing libp2p alone costs, or the CLI has started importing too much.
TARGET_FRACTION = 0.25


def measure(quick: bool, *, runs: int | None = None) -> list[Row]:
    runs = runs or (5 if quick else 10)
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        home = Home(Path(tmp) / "home")
        init_home(home)
        with DaemonProcess(home) as daemon:
            daemon.start()
            bare = timed([sys.executable, "-c", "pass"], runs)
            libp2p = timed([sys.executable, "-c", "import libp2p"], runs)
            commands = [
                ("p2pshare --help", cli_command(home, "--help")),
                ("p2pshare id", cli_command(home, "id")),
                ("p2pshare status --json", cli_command(home, "status", "--json")),
            ]
            measured = [(name, timed(argv, runs)) for name, argv in commands]
    baseline = f"python -c pass {bare[0] * 1000:.0f} ms; import libp2p {libp2p[0] * 1000:.0f} ms"
    return [
        Row(
            f"CLI `{name}`, median / max of {runs}",
            f"{median * 1000:.0f} / {worst * 1000:.0f} ms",
            baseline,
            f"median < {TARGET_FRACTION:g} x import libp2p",
            median < TARGET_FRACTION * libp2p[0],
        )
        for name, (median, worst) in measured
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    args = parser.parse_args()
    print_table(measure(args.quick, runs=None if args.quick else args.runs))


if __name__ == "__main__":
    main()
