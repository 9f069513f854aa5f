"""Many downloaders: one seeder, N daemon processes fetching the same share at once.

Default: 100 downloaders of a 64 MiB share (--quick: 20). Every downloader gets the
seeder's ticket and nothing else (no bootstrap), all `get` calls are issued together,
and each output is compared byte for byte (BLAKE3) with the original here, on top
of the daemon's own chunk verification.

Prints, each next to its same-run baseline:
* completed and verified downloads (target: all);
* total throughput, N x size / time until the last finished, against one downloader
  fetching a different 64 MiB share from the same seeder alone just before (target:
  the crowd gets at least as much through as one downloader alone);
* completion time min / p50 / p95 / max from the common start (target, fairness:
  p95 within 1.5 x p50);
* the seeder's CPU time (user + system) per GiB it sent, in the crowd and for the one
  downloader alone (run with --count 10 and 100 to read off how it grows);
* the seeder's peak RSS (VmHWM), against its peak before the crowd came (target:
  under 200 MB, as for any daemon), and what the crowd added per connection: the
  growth of the peak divided by the number of downloaders, in KiB.

* the downloaders' own CPU time per GiB they received, against the one downloader alone,
  and how busy the machine was meanwhile; per downloader, the DHT messages it sent (its
  finds and provides) and its connections at the end;
* the chunk bytes the downloaders received per byte of the share they kept: above 1.00
  is waste (endgame duplicates, requests that timed out and were asked again).

A downloader that finishes announces the content like any other; the report says how
many downloads also took chunks from other downloaders.

``--seeder-rate MBPS`` caps the seeder's upload (``daemon --upload-rate``), as a home
uplink would: one downloader alone gets at most that, and a crowd gets more only by
fetching from each other. On one machine without a cap the crowd is bound by the CPU
the daemons share, not by any uplink (docs/benchmarks.md).

``--settled`` starts the crowd only once the downloaders' first routing-table refresh
(30 s after each joined) is over, that is once the machine has been less than half busy
for 10 s: started together, they would all refresh during the crowd, a burst a network
whose nodes joined at different times does not have. The wait is measured, not assumed
(it ended 40 s after the downloaders started in the runs of 2026-12-07).

``--timeline`` prints, every 5 s of the crowd, how busy the machine was, the seeder's CPU
and the time its main thread waited for a CPU while it had work (/proc/PID/schedstat),
what it sent, and the downloaders' CPU.

Run: .venv/bin/python bench/downloaders.py [--count 100] [--size-mib 64] [--quick] [--settled]
     [--seeder-rate MBPS] [--timeline]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import blake3
from rows import Row, median, percentile, print_table

from p2pshare.control.client import ControlClient
from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    init_home,
    peak_rss_mb,
    start_all,
    stop_all,
    write_varied_file,
)
from p2pshare.node.discovery import FIRST_REFRESH_DELAY

MIB = 1 << 20
GIB = 1 << 30
START_TIMEOUT = 600.0
RSS_TARGET_MB = 200.0
# Fairness: the slower downloaders finish within this factor of the median.
FAIRNESS_TARGET = 1.5
# --timeline: seconds between two printed samples of the crowd.
TIMELINE_EVERY = 5.0
# --settled: the machine counts as settled once less busy than this over SETTLE_WINDOW s.
SETTLED_BUSY = 0.5
SETTLE_WINDOW = 10.0
# Each daemon holds a few dozen descriptors; the seeder one or two per downloader.
FDS_PER_DAEMON = 64


def call(home: Home, method: str, params: dict[str, Any]) -> Any:
    with ControlClient(home, timeout=None) as client:
        return client.call(method, params)


def digest(path: Path) -> bytes:
    hasher = blake3.blake3()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            hasher.update(block)
    return hasher.digest()


def log_tail(home: Home, lines: int = 30) -> str:
    """The end of a daemon's log: the traceback of a failed download, before the
    temporary homes are gone."""
    try:
        text = home.log_path.read_text(errors="replace")
    except OSError as exc:
        return f"    (no log: {exc})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # noqa: PTH123
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int) -> float:
    """Seconds the main thread of ``pid`` has waited for a CPU while runnable
    (/proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:  # noqa: PTH123
        return int(stat.read().split()[1]) / 1e9


def print_timeline(
    seeder: DaemonProcess, downloaders: list[int], began: float, done: threading.Event
) -> None:
    """Every TIMELINE_EVERY s from ``began`` until ``done``: how busy the machine was,
    the seeder's CPU and run-queue wait (each as a share of the interval), the
    downloaders' CPU (sum) and what the seeder sent."""

    def sample() -> tuple[float, tuple[float, float], float, float, float, int]:
        return (
            time.perf_counter(),
            machine_busy(),
            cpu_seconds(seeder.pid),
            run_queue_wait(seeder.pid),
            sum(cpu_seconds(pid) for pid in downloaders),
            bytes_sent(seeder.home),
        )

    last = sample()
    while not done.wait(TIMELINE_EVERY):
        now = sample()
        span = now[0] - last[0]
        busy = busy_share(last[1], now[1])
        print(
            f"  t={now[0] - began:5.0f} s: machine busy {busy:4.0%}; seeder CPU "
            f"{(now[2] - last[2]) / span:4.0%}, waiting for a CPU {(now[3] - last[3]) / span:4.0%},"
            f" sent {(now[5] - last[5]) / span / 1e6:5.1f} MB/s; downloaders' CPU "
            f"{(now[4] - last[4]) / span:5.0%}",
            flush=True,
        )
        last = now


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:  # noqa: PTH123
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How busy the machine was between two :func:`machine_busy` readings."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def wait_until_settled(timeout: float) -> float:
    """Wait for the downloaders' first DHT refresh, then until the machine is quiet;
    return the seconds waited (``timeout`` at most)."""
    began = time.perf_counter()
    time.sleep(FIRST_REFRESH_DELAY)
    while time.perf_counter() - began < timeout:
        before = machine_busy()
        time.sleep(SETTLE_WINDOW)
        if busy_share(before, machine_busy()) < SETTLED_BUSY:
            break
    return time.perf_counter() - began


def bytes_sent(home: Home) -> int:
    """Chunk bytes the daemon of ``home`` has sent since it started (``status``)."""
    return int(call(home, "status", {})["traffic"]["bytes_sent"])


def chunks_by_path(reports: list[dict[str, Any] | None]) -> Counter[str]:
    """Chunks received over each path (data channel, libp2p stream, relay), all downloads."""
    counts: Counter[str] = Counter()
    for report in reports:
        if report is not None:
            for peer, chunks in report.get("chunks_from", {}).items():
                counts[report["paths"].get(peer, "?")] += chunks
    return counts


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft descriptor limit (inherited by the daemons) if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    if soft < needed:
        raise SystemExit(f"needs {needed} file descriptors; `ulimit -n` allows {soft}")
    return soft


def dht_costs(homes: list[Home]) -> tuple[int, int]:
    """DHT messages the daemons of ``homes`` sent (finds, provides, and the walks that
    keep their routing tables), and their connections now."""
    messages = connections = 0
    for home in homes:
        snap = call(home, "metrics", {})
        dht = snap["dht"]
        messages += dht["messages"] + dht["provide_messages"] + dht["routing_messages"]
        connections += snap["connections"]
    return messages, connections


def measure(
    quick: bool,
    *,
    count: int | None = None,
    size_mib: int = 64,
    settled: bool = False,
    seeder_rate: float = 0.0,
    timeline: bool = False,
) -> list[Row]:
    count = count or (20 if quick else 100)
    size = size_mib * MIB
    raise_fd_limit(FDS_PER_DAEMON * (count + 2))
    with tempfile.TemporaryDirectory(prefix="p2ps-crowd-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        data, solo_data = root / "crowd.bin", root / "solo.bin"
        write_varied_file(data, size)
        write_varied_file(solo_data, size)
        want = digest(data)
        homes = [Home(root / f"d{i}") for i in range(count + 1)]
        for home in homes:
            init_home(home)
        cap = ["--upload-rate", str(int(seeder_rate * 1e6))] if seeder_rate else []
        seeder = stack.enter_context(DaemonProcess(homes[0], log_level="warning", args=cap))
        seeder.start(START_TIMEOUT)
        crowd_share = call(homes[0], "share", {"path": str(data)})
        solo_share = call(homes[0], "share", {"path": str(solo_data)})
        downloaders = [
            stack.enter_context(DaemonProcess(h, log_level="warning")) for h in homes[1:]
        ]
        stack.callback(stop_all, [seeder, *downloaders])
        t0 = time.perf_counter()
        start_all(downloaders, timeout=START_TIMEOUT)
        startup = time.perf_counter() - t0
        print(f"  {count} downloaders started in {startup:.0f} s", flush=True)
        if settled:
            waited = wait_until_settled(START_TIMEOUT)
            print(f"  machine settled {waited:.0f} s after the downloaders started", flush=True)

        # Baseline: one downloader alone, another share of the same size, same seeder.
        solo_out = root / "solo-got.bin"
        cpu0, sent0 = cpu_seconds(seeder.pid), bytes_sent(homes[0])
        solo_dl0 = cpu_seconds(downloaders[0].pid)
        t0 = time.perf_counter()
        solo_received = call(homes[1], "get", {"ref": solo_share["ticket"], "dest": str(solo_out)})[
            "received_bytes"
        ]
        solo_s = time.perf_counter() - t0
        solo_out.unlink()
        cpu1, sent1 = cpu_seconds(seeder.pid), bytes_sent(homes[0])
        solo_cpu = (cpu1 - cpu0) / max(sent1 - sent0, 1) * GIB
        solo_dl_cpu = (cpu_seconds(downloaders[0].pid) - solo_dl0) / size * GIB
        seeder_before = peak_rss_mb(seeder.pid)

        dht0, _ = dht_costs(homes[1:])
        outs = [root / f"got-{i}.bin" for i in range(count)]
        finished: list[float | None] = [None] * count
        reports: list[dict[str, Any] | None] = [None] * count
        errors: list[str] = []
        go = threading.Event()

        def fetch(index: int) -> None:
            go.wait()
            try:
                reports[index] = call(
                    homes[index + 1],
                    "get",
                    {"ref": crowd_share["ticket"], "dest": str(outs[index])},
                )
                finished[index] = time.perf_counter() - began
            except Exception as exc:  # noqa: BLE001 - reported in the figures
                errors.append(f"downloader {index}: {exc}\n{log_tail(homes[index + 1])}")

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        crowd_cpu0 = sum(cpu_seconds(d.pid) for d in downloaders)
        busy0 = machine_busy()
        began = time.perf_counter()
        done = threading.Event()
        sampler = threading.Thread(
            target=print_timeline, args=(seeder, [d.pid for d in downloaders], began, done)
        )
        if timeline:
            sampler.start()
        go.set()
        for thread in threads:
            thread.join(timeout=START_TIMEOUT)
        done.set()
        if timeline:
            sampler.join()
        busy1 = machine_busy()
        downloaders_cpu = sum(cpu_seconds(d.pid) for d in downloaders) - crowd_cpu0
        dht1, connections = dht_costs(homes[1:])
        seeder_peak = peak_rss_mb(seeder.pid)
        crowd_sent = bytes_sent(homes[0]) - sent1
        crowd_cpu = (cpu_seconds(seeder.pid) - cpu1) / max(crowd_sent, 1) * GIB
        verified = 0
        for out in outs:
            if out.exists():
                verified += digest(out) == want
                out.unlink()
        for error in errors[:5]:
            print(f"  {error}", flush=True)

    times = [t for t in finished if t is not None]
    # Chunks actually received from a peer other than the seeder, not merely a link.
    seeder_id = seeder.info["peer_id"]
    helped = sum(
        1 for r in reports if r is not None and set(r.get("chunks_from", {})) - {seeder_id}
    )
    total = len(times) * size / max(times) if times else 0.0
    by_path = chunks_by_path(reports)
    # Duplicates (endgame, requests timed out and asked again) count; verified or not.
    crowd_received = sum(r["received_bytes"] for r in reports if r is not None)
    capped = f"; seeder capped at {seeder_rate:g} MB/s" if seeder_rate else ""
    solo_rate = size / solo_s
    per_connection_kib = (seeder_peak - seeder_before) * 1024 / count
    received = verified * size
    busy = busy_share(busy0, busy1)
    return [
        Row(
            f"{count} concurrent downloaders of {size_mib} MiB: completed and verified",
            f"{verified}/{count}",
            f"downloaders started in {startup:.0f} s",
            "all",
            verified == count,
        ),
        Row(
            f"{count} concurrent downloaders: total throughput",
            f"{total / 1e6:.0f} MB/s",
            f"one downloader alone: {solo_rate / 1e6:.0f} MB/s{capped}",
            ">= one downloader alone",
            total >= solo_rate,
        ),
        Row(
            f"{count} concurrent downloaders: completion time min / p50 / p95 / max",
            (
                f"{min(times):.1f} / {median(times):.1f} / {percentile(times, 0.95):.1f} / "
                f"{max(times):.1f} s; {helped} also fetched from other downloaders"
                if times
                else "none finished"
            ),
            f"one downloader alone: {solo_s:.2f} s",
            f"p95 <= {FAIRNESS_TARGET:g} x p50",
            bool(times) and percentile(times, 0.95) <= FAIRNESS_TARGET * median(times),
        ),
        Row(
            f"{count} concurrent downloaders: seeder CPU per GiB it sent",
            f"{crowd_cpu:.2f} s/GiB ({crowd_sent / GIB:.1f} GiB sent)",
            f"one downloader alone: {solo_cpu:.2f} s/GiB",
            "-",
            None,
        ),
        Row(
            f"{count} concurrent downloaders: their CPU per GiB received (all of them)",
            (
                f"{downloaders_cpu / received * GIB:.2f} s/GiB; machine busy {busy:.0%}"
                if received
                else f"nothing received; machine busy {busy:.0%}"
            ),
            f"one downloader alone: {solo_dl_cpu:.2f} s/GiB",
            "-",
            None,
        ),
        Row(
            f"{count} concurrent downloaders: per downloader, DHT messages sent and connections",
            f"{(dht1 - dht0) / count:.1f} messages; {connections / count:.1f} connections",
            "-",
            "-",
            None,
        ),
        Row(
            f"{count} concurrent downloaders: chunk bytes received per byte of the share",
            f"{crowd_received / received:.2f}" if received else "nothing received",
            f"one downloader alone: {solo_received / size:.2f}",
            "-",
            None,
        ),
        Row(
            f"{count} concurrent downloaders: chunks received by path",
            ", ".join(f"{path} {n}" for path, n in by_path.most_common()) or "none",
            "-",
            "-",
            None,
        ),
        Row(
            f"{count} concurrent downloaders: seeder peak RSS",
            f"{seeder_peak:.0f} MB; {per_connection_kib:.0f} KiB per connection",
            f"seeder before the crowd: {seeder_before:.0f} MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            seeder_peak < RSS_TARGET_MB,
        ),
    ]


# A fast home uplink (200 Mbit/s): what a crowd shares when the seeder's uplink, not
# the machine's CPU, is what is scarce, as on a real network.
CAPPED_SEEDER_MBPS = 25.0


def measure_capped(quick: bool) -> list[Row]:
    """The crowd with the seeder's upload capped at ``CAPPED_SEEDER_MBPS``."""
    return measure(quick, seeder_rate=CAPPED_SEEDER_MBPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="20 downloaders")
    parser.add_argument(
        "--settled", action="store_true", help="start the crowd after the first DHT refresh"
    )
    parser.add_argument(
        "--seeder-rate", type=float, default=0.0, help="cap the seeder's upload, MB/s"
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print machine, seeder and downloader CPU every 5 s during the crowd",
    )
    args = parser.parse_args()
    print_table(
        measure(
            args.quick,
            count=args.count,
            size_mib=args.size_mib,
            settled=args.settled,
            seeder_rate=args.seeder_rate,
            timeline=args.timeline,
        )
    )


if __name__ == "__main__":
    main()
