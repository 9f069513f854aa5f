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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rss-size-mib", type=int, default=4096)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.rss_size_mib = 256, 512
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        root = Path(tmp)
        data = root / "speed.bin"
        write_varied_file(data, args.size_mib * MIB)
        home = Home(root / "home")
        init_home(home)
        with DaemonProcess(home, log_level="warning") as daemon:
            daemon.start()
            blake3_baseline(data)  # warm the page cache so both read from memory
            baseline = blake3_baseline(data)
            speed = share_speed(home, data)
            print(f"share import of {args.size_mib} MiB")
            print(f"  single-thread BLAKE3 (baseline): {baseline / 1e6:8.1f} MB/s")
            print(f"  p2pshare share:                  {speed / 1e6:8.1f} MB/s")
            print(f"  ratio: {speed / baseline:.2f}  (target >= 0.50)")
            data.unlink()
            big = root / "rss.bin"
            write_varied_file(big, args.rss_size_mib * MIB)
            share_speed(home, big)
            print(
                f"daemon peak RSS after sharing {args.rss_size_mib} MiB: "
                f"{peak_rss_mb(daemon.pid):.1f} MB  (target < 200 MB)"
            )


if __name__ == "__main__":
    main()
