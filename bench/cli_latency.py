"""Wall time of `p2pshare --help` and `p2pshare id` against a running daemon.

Baseline, measured in the same run: the bare interpreter (`python -c pass`) and
`python -c "import libp2p"`, which is what every query would pay if the CLI
imported libp2p.  Target: `--help` and `id` stay far below the libp2p import.

Run: .venv/bin/python bench/cli_latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, cli_command, init_home


def timed(argv: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        home = Home(Path(tmp) / "home")
        init_home(home)
        with DaemonProcess(home) as daemon:
            daemon.start()
            rows = [
                ("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
                ("python -c 'import libp2p' (baseline)", [sys.executable, "-c", "import libp2p"]),
                ("p2pshare --help", cli_command(home, "--help")),
                ("p2pshare id", cli_command(home, "id")),
                ("p2pshare status --json", cli_command(home, "status", "--json")),
            ]
            print(f"{'command':<40} {'median ms':>10} {'max ms':>8}   ({args.runs} runs)")
            for name, argv in rows:
                median, worst = timed(argv, args.runs)
                print(f"{name:<40} {median * 1000:>10.1f} {worst * 1000:>8.1f}")


if __name__ == "__main__":
    main()
