"""Share-import speed and the daemon's memory while sharing.

Prints, from one run:
* `p2pshare share` of a large file through a running daemon, in MB/s, next to the
  single-thread BLAKE3 speed of reading and hashing the same file in this process
  (the baseline). Target: at least 0.5 of the baseline.
* the daemon's peak RSS (VmHWM) after sharing a larger file. Target: under 200 MB.

Run: .venv/bin/python bench/share_import.py [--size-mib 1024] [--rss-size-mib 4096]
     (--quick uses 256 MiB and 512 MiB)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import blake3
from rows import Row, print_table

from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    init_home,
    peak_rss_mb,
    run_cli,
    write_varied_file,
)

MIB = 1 << 20


def blake3_baseline(path: Path) -> float:
    hasher = blake3.blake3()
    buffer = bytearray(4 * MIB)
    t0 = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while count := f.readinto(buffer):
            hasher.update(memoryview(buffer)[:count])
    hasher.digest()
    return path.stat().st_size / (time.perf_counter() - t0)


def share_speed(home: Home, path: Path) -> float:
    t0 = time.perf_counter()
    result = run_cli(home, "share", str(path), "--json", timeout=3600)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    json.loads(result.stdout)
    return path.stat().st_size / elapsed


RATIO_TARGET = 0.5
RSS_TARGET_MB = 200.0


def measure(
    quick: bool, *, size_mib: int | None = None, rss_size_mib: int | None = None
) -> list[Row]:
    size_mib = size_mib or (256 if quick else 1024)
    rss_size_mib = rss_size_mib or (512 if quick else 4096)
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        root = Path(tmp)
        data = root / "speed.bin"
        write_varied_file(data, size_mib * MIB)
        home = Home(root / "home")
        init_home(home)
        with DaemonProcess(home, log_level="warning") as daemon:
            daemon.start()
            idle_rss = peak_rss_mb(daemon.pid)
            blake3_baseline(data)  # warm the page cache so both read from memory
            baseline = blake3_baseline(data)
            speed = share_speed(home, data)
            data.unlink()
            big = root / "rss.bin"
            write_varied_file(big, rss_size_mib * MIB)
            share_speed(home, big)
            peak = peak_rss_mb(daemon.pid)
    ratio = speed / baseline
    return [
        Row(
            f"`share` of {size_mib} MiB",
            f"{speed / 1e6:.0f} MB/s",
            f"BLAKE3 single thread {baseline / 1e6:.0f} MB/s (ratio {ratio:.2f})",
            f">= {RATIO_TARGET:g} x baseline",
            ratio >= RATIO_TARGET,
        ),
        Row(
            f"daemon peak RSS after sharing {rss_size_mib} MiB",
            f"{peak:.0f} MB",
            f"the same daemon before sharing: {idle_rss:.0f} MB",
            f"< {RSS_TARGET_MB:g} MB",
            peak < RSS_TARGET_MB,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--rss-size-mib", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(measure(args.quick, size_mib=args.size_mib, rss_size_mib=args.rss_size_mib))


if __name__ == "__main__":
    main()
