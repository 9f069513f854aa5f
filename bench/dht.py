"""DHT benchmark: networks of real daemon processes on 127.0.0.1.

For each network size N (default 10, 25, 50) it starts one bootstrap daemon and
N-1 daemons that know only the bootstrap node, then:
* time until findable: a random node shares a new file; another random node asks
  `find` until the provider appears; the time from the share call to that answer.
* find latency: `find` calls for content whose announcement has gone out, from random nodes,
  timed at the control API (no CLI start-up in the figure); p50 and p95.
Baseline measured in the same run: one control-API round trip (`id`) on the same
daemons, the floor under every find. Targets for 50 nodes: findable within 1 s,
find p50 at most 500 ms.

Run: .venv/bin/python bench/dht.py [--sizes 10,25,50] [--rounds 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from p2pshare.control.client import ControlClient
from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    init_home,
    start_all,
    wait_announced,
)

FIND_TIMEOUT = 10.0
FINDABLE_DEADLINE = 30.0


def timed_call(home: Home, method: str, params: dict[str, object]) -> tuple[float, object]:
    with ControlClient(home, timeout=60) as client:
        t0 = time.perf_counter()
        result = client.call(method, params)
        return time.perf_counter() - t0, result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def share_file(root: Path, home: Home, index: int) -> str:
    path = root / f"content-{index}.bin"
    path.write_bytes(os.urandom(4096))
    _, result = timed_call(home, "share", {"path": str(path)})
    assert isinstance(result, dict)
    return str(result["cid"])


def until_findable(root: Path, sharer: Home, finder: Home, index: int) -> float:
    t0 = time.perf_counter()
    cid = share_file(root, sharer, index)
    while time.perf_counter() - t0 < FINDABLE_DEADLINE:
        _, result = timed_call(finder, "find", {"cid": cid, "timeout": FIND_TIMEOUT})
        assert isinstance(result, dict)
        if result["providers"]:
            return time.perf_counter() - t0
    return float("inf")


def run_size(size: int, rounds: int, rng: random.Random) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="p2ps-dht-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        homes = [Home(root / f"n{i}") for i in range(size)]
        init_home(homes[0])
        boot = stack.enter_context(DaemonProcess(homes[0], log_level="warning"))
        boot.start()
        others = []
        for home in homes[1:]:
            init_home(home, bootstrap=(boot.info["addrs"][0],))
            others.append(stack.enter_context(DaemonProcess(home, log_level="warning")))
        t0 = time.perf_counter()
        start_all(others, timeout=300)
        startup = time.perf_counter() - t0
        rtt = [timed_call(rng.choice(homes), "id", {})[0] for _ in range(rounds)]
        findable = []
        cids: list[tuple[str, Home]] = []
        for index in range(rounds):
            sharer, finder = rng.sample(homes, 2)
            findable.append(until_findable(root, sharer, finder, index))
        for index in range(rounds):
            sharer, finder = rng.sample(homes, 2)
            cid = share_file(root, sharer, rounds + index)
            wait_announced(sharer, cid)
            cids.append((cid, finder))
        lookups = []
        for cid, finder in cids:
            elapsed, result = timed_call(finder, "find", {"cid": cid, "timeout": FIND_TIMEOUT})
            assert isinstance(result, dict)
            if result["providers"]:
                lookups.append(elapsed)
        return {
            "startup_s": startup,
            "rtt_ms": statistics.median(rtt) * 1000,
            "findable_p50_s": statistics.median(findable),
            "findable_max_s": max(findable),
            "find_p50_ms": statistics.median(lookups) * 1000 if lookups else float("inf"),
            "find_p95_ms": percentile(lookups, 0.95) * 1000 if lookups else float("inf"),
            "found": len(lookups),
            "asked": len(cids),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,25,50")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="sizes 5,10 and 5 rounds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds = "5,10", 5
    rng = random.Random(args.seed)
    print(
        f"{'nodes':>5} {'start s':>8} {'api rtt ms':>10} {'findable p50 s':>15} "
        f"{'findable max s':>15} {'find p50 ms':>12} {'find p95 ms':>12} {'found':>7}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = run_size(size, args.rounds, rng)
        print(
            f"{size:>5} {r['startup_s']:>8.1f} {r['rtt_ms']:>10.1f} {r['findable_p50_s']:>15.3f} "
            f"{r['findable_max_s']:>15.3f} {r['find_p50_ms']:>12.1f} {r['find_p95_ms']:>12.1f} "
            f"{int(r['found']):>3}/{int(r['asked'])}"
        )
    print("targets at 50 nodes: findable within 1 s; find p50 <= 500 ms")


if __name__ == "__main__":
    main()
