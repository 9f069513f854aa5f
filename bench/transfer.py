"""Transfer benchmarks between daemon processes on 127.0.0.1.

Prints, each next to its same-run baseline and target:
1. `get` of a large file (default 1 GiB) between two daemons, against a plain TCP
   transfer of the same file in the same run (sendfile -> recv_into -> write);
   medians of three alternating runs, each path warmed up once.
   Target: at least 0.5 of the plain socket.
2. multi-source: three seeders each capped at R bytes/s (`daemon --upload-rate`);
   the downloader's rate against R. Target: at least 2.5 R.
3. the downloading daemon's peak RSS (VmHWM) while fetching a larger file
   (default 4 GiB). Target: under 200 MB.

Run: .venv/bin/python bench/transfer.py [--quick] [--size-mib N] [--rss-size-mib N]
     [--rate-mb R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rows import Row

from p2pshare.control.client import ControlClient
from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    init_home,
    peak_rss_mb,
    start_all,
    wait_announced,
    write_varied_file,
)

MIB = 1 << 20


def call(home: Home, method: str, params: dict[str, Any]) -> Any:
    with ControlClient(home, timeout=None) as client:
        return client.call(method, params)


def plain_tcp(path: Path, out: Path) -> float:
    """Bytes/s of sendfile -> recv_into -> write over loopback, one connection."""
    size = path.stat().st_size
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def send() -> None:
        conn, _ = listener.accept()
        with conn, path.open("rb") as f:
            conn.sendfile(f)

    thread = threading.Thread(target=send)
    thread.start()
    buffer = bytearray(4 * MIB)
    view = memoryview(buffer)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, out.open("wb") as f:
        received = 0
        while received < size:
            n = sock.recv_into(buffer)
            if not n:
                break
            f.write(view[:n])
            received += n
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - t0
    thread.join()
    listener.close()
    out.unlink()
    return size / elapsed


def single(root: Path, size: int, rounds: int = 3) -> tuple[float, float]:
    """(p2pshare get, plain TCP) in bytes/s: medians of ``rounds`` alternating runs.

    Each path first runs once unmeasured.  On this VM the first writes into memory
    the guest never touched before cost about twice as much (the host maps the pages
    in lazily), and that cost should fall on neither path alone.
    """
    data = root / "single.bin"
    write_varied_file(data, size)
    homes = [Home(root / "a"), Home(root / "b")]
    for home in homes:
        init_home(home)
    with ExitStack() as stack:
        daemons = [stack.enter_context(DaemonProcess(h, log_level="warning")) for h in homes]
        start_all(daemons)
        shared = call(homes[0], "share", {"path": str(data)})
        out = root / "got.bin"

        def get() -> float:
            report = call(homes[1], "get", {"ref": shared["ticket"], "dest": str(out)})
            out.unlink()
            return float(size / report["elapsed_s"])

        plain_tcp(data, root / "warm.bin")
        cold = get()
        plains, gets = [], []
        for _ in range(rounds):
            plains.append(plain_tcp(data, root / "plain.bin"))
            gets.append(get())
    baseline, speed = statistics.median(plains), statistics.median(gets)
    print(f"1. get of {size // MIB} MiB between two daemons, median of {rounds} alternating runs")
    print(f"   plain TCP socket (baseline): {baseline / 1e6:8.1f} MB/s  (runs: {_mbs(plains)})")
    print(f"   p2pshare get:                {speed / 1e6:8.1f} MB/s  (runs: {_mbs(gets)})")
    print(f"   first get, not counted:      {cold / 1e6:8.1f} MB/s")
    print(f"   ratio {speed / baseline:.2f} (target >= 0.50)")
    return speed, baseline


def _mbs(speeds: list[float]) -> str:
    return ", ".join(f"{s / 1e6:.0f}" for s in speeds)


def multi(root: Path, size: int, rate: int) -> tuple[float, int]:
    """(p2pshare get in bytes/s, peers it used)."""
    data = root / "multi.bin"
    write_varied_file(data, size)
    homes = [Home(root / f"s{i}") for i in range(3)] + [Home(root / "d")]
    for home in homes:
        init_home(home)
    with ExitStack() as stack:
        seeders = [
            stack.enter_context(
                DaemonProcess(h, log_level="warning", args=["--upload-rate", str(rate)])
            )
            for h in homes[:3]
        ]
        getter = stack.enter_context(DaemonProcess(homes[3], log_level="warning"))
        start_all([*seeders, getter])
        shared = call(homes[0], "share", {"path": str(data)})
        for index, home in enumerate(homes[1:3], start=1):
            call(home, "get", {"ref": shared["ticket"], "dest": str(root / f"seed{index}.bin")})
        for seeder in seeders[1:]:
            call(seeder.home, "connect", {"addr": seeders[0].info["addrs"][0]})
            wait_announced(seeder.home, shared["cid"])
        call(homes[3], "connect", {"addr": seeders[0].info["addrs"][0]})
        out = root / "multi-got.bin"
        report = call(homes[3], "get", {"ref": shared["cid"], "dest": str(out)})
        speed = size / report["elapsed_s"]
    print(f"2. multi-source get of {size // MIB} MiB, three seeders capped at R each")
    print(f"   R (baseline):                {rate / 1e6:8.1f} MB/s")
    print(
        f"   p2pshare get:                {speed / 1e6:8.1f} MB/s from {len(report['peers'])} peers"
    )
    print(f"   ratio {speed / rate:.2f} R (target >= 2.5 R)")
    return speed, len(report["peers"])


def memory(root: Path, size: int) -> tuple[float, float]:
    """(peak RSS after the get, peak RSS before it) in MB."""
    data = root / "rss.bin"
    write_varied_file(data, size)
    homes = [Home(root / "m1"), Home(root / "m2")]
    for home in homes:
        init_home(home)
    with ExitStack() as stack:
        daemons = [stack.enter_context(DaemonProcess(h, log_level="warning")) for h in homes]
        start_all(daemons)
        idle = peak_rss_mb(daemons[1].pid)
        shared = call(homes[0], "share", {"path": str(data)})
        out = root / "rss-got.bin"
        call(homes[1], "get", {"ref": shared["ticket"], "dest": str(out)})
        peak = peak_rss_mb(daemons[1].pid)
    print(f"3. downloading daemon while fetching {size // MIB} MiB")
    print(f"   peak RSS before (baseline):  {idle:8.1f} MB")
    print(f"   peak RSS after the get:      {peak:8.1f} MB (target < 200 MB)")
    return peak, idle


def measure(
    quick: bool,
    *,
    size_mib: int | None = None,
    multi_size_mib: int | None = None,
    rss_size_mib: int | None = None,
    rate_mb: float = 10.0,
) -> list[Row]:
    """The three figures as rows for bench/run.py (the functions above also print them)."""
    size_mib = size_mib or (128 if quick else 1024)
    multi_size_mib = multi_size_mib or (64 if quick else 256)
    rss_size_mib = rss_size_mib or (256 if quick else 4096)
    rate = int(rate_mb * 1e6)
    with tempfile.TemporaryDirectory(prefix="p2ps-xfer-") as tmp:
        root = Path(tmp)
        speed, plain = single(root, size_mib * MIB)
        multi_speed, peers = multi(root, multi_size_mib * MIB, rate)
        peak, idle = memory(root, rss_size_mib * MIB)
    return [
        Row(
            f"`get` of {size_mib} MiB between two daemons (median of 3)",
            f"{speed / 1e6:.0f} MB/s",
            f"plain TCP {plain / 1e6:.0f} MB/s (ratio {speed / plain:.2f})",
            ">= 0.5 x plain TCP",
            speed / plain >= 0.5,
        ),
        Row(
            f"multi-source `get` of {multi_size_mib} MiB, 3 seeders capped at R",
            f"{multi_speed / 1e6:.1f} MB/s from {peers} peers",
            f"R = {rate / 1e6:g} MB/s ({multi_speed / rate:.2f} R)",
            ">= 2.5 R",
            multi_speed / rate >= 2.5,
        ),
        Row(
            f"downloading daemon's peak RSS fetching {rss_size_mib} MiB",
            f"{peak:.0f} MB",
            f"{idle:.0f} MB before the get",
            "< 200 MB",
            peak < 200,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--multi-size-mib", type=int, default=256)
    parser.add_argument("--rss-size-mib", type=int, default=4096)
    parser.add_argument("--rate-mb", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.multi_size_mib, args.rss_size_mib = 128, 64, 256
    with tempfile.TemporaryDirectory(prefix="p2ps-xfer-") as tmp:
        root = Path(tmp)
        single(root, args.size_mib * MIB)
        multi(root, args.multi_size_mib * MIB, int(args.rate_mb * 1e6))
        memory(root, args.rss_size_mib * MIB)


if __name__ == "__main__":
    main()
