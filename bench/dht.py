"""DHT benchmark: networks of real daemon processes, on loopback or in network namespaces.

Loopback mode (default): for each network size N (default 10, 25, 50) it starts one
bootstrap daemon on 127.0.0.1 and N-1 daemons that know only the bootstrap node, then:
* time until findable: a random node shares a new file; another random node asks
  `find` until the provider appears; the time from the share call to that answer,
  and for the slowest what it was made of (the share call, the finds that came back
  empty, the find that answered).
* find latency: `find` calls for content whose announcement has gone out, from random nodes,
  timed at the control API (no CLI start-up in the figure); p50 and p95, and the lookup's
  hops (referral chain to the first peer holding the record, from `find`'s `lookup`).
* DHT messages and bytes per find (the finder's GET_PROVIDERS exchanges) and per
  provide (the sharer's FIND_NODE lookup for the closest peers and its ADD_PROVIDERs),
  from the daemons' `metrics` counters.
Baseline measured in the same run: one control-API round trip (`id`) on the same
daemons, the floor under every find. Targets for 50 nodes: findable within 1 s,
find p50 at most 500 ms.

Namespace mode (--netns): each daemon in its own network namespace, every packet
between two of them delayed 10 ms each way (20 ms round trip; see bench/netlab.py).
Three bootstrap nodes; the others know only those. Every node shares a file; then
random pairs: one node finds another's share and fetches it (`get`, verified by the
daemon, and compared byte for byte here). Baseline: the libp2p ping round trip
between the same daemons. Target for 50 nodes: find p50 at most 500 ms.

All N processes share this machine's cores, so the figures include CPU contention
that a real network of N machines would not have.

Run: .venv/bin/python bench/dht.py [--sizes 10,25,50] [--rounds 20] [--quick]
     [--netns | --both]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import netlab
from rows import Row, median, percentile, print_table

from p2pshare.control.client import ControlClient
from p2pshare.home import Home
from p2pshare.launcher import (
    DaemonProcess,
    DaemonStartError,
    init_home,
    start_all,
    stop_all,
    wait_announced,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

FIND_TIMEOUT = 10.0
FINDABLE_DEADLINE = 30.0
START_TIMEOUT = 300.0
BOOTSTRAP_NODES = 3
ONE_WAY_MS = 10.0
NETNS_SHARE_BYTES = 64 * 1024


def timed_call(home: Home, method: str, params: dict[str, object]) -> tuple[float, Any]:
    with ControlClient(home, timeout=60) as client:
        t0 = time.perf_counter()
        result = client.call(method, params)
        return time.perf_counter() - t0, result


def counted_find(home: Home, cid: str, result: SizeResult) -> tuple[float, Any]:
    """``find`` at the control API, timed; the GET_PROVIDERS messages and bytes it cost
    (the finder's ``metrics`` counters before and after) go into ``result``."""
    _, before = timed_call(home, "metrics", {})
    elapsed, found = timed_call(home, "find", {"cid": cid, "timeout": FIND_TIMEOUT})
    _, after = timed_call(home, "metrics", {})
    result.messages.append(after["dht"]["messages"] - before["dht"]["messages"])
    result.message_bytes.append(after["dht"]["message_bytes"] - before["dht"]["message_bytes"])
    return elapsed, found


def dht_counters(home: Home) -> dict[str, int]:
    _, snapshot = timed_call(home, "metrics", {})
    return dict(snapshot["dht"])


def counted_provide(home: Home, before: dict[str, int], result: SizeResult) -> None:
    """Wait until the provides ``home`` began since ``before`` (its ``dht_counters``)
    have ended, network lookup and all, and put what one cost into ``result``."""
    deadline = time.monotonic() + FINDABLE_DEADLINE
    while time.monotonic() < deadline:
        after = dht_counters(home)
        provides = after["provides"] - before["provides"]
        if provides and not after["provides_running"]:
            sent = after["provide_messages"] - before["provide_messages"]
            nbytes = after["provide_message_bytes"] - before["provide_message_bytes"]
            result.provide_messages.append(sent / provides)
            result.provide_bytes.append(nbytes / provides)
            return
        time.sleep(0.05)
    print(f"  provides of {home.root.name} still running after 30 s", file=sys.stderr)


def share_file(root: Path, home: Home, index: int, size: int = 4096) -> str:
    path = root / f"content-{index}.bin"
    path.write_bytes(os.urandom(size))
    _, result = timed_call(home, "share", {"path": str(path)})
    assert isinstance(result, dict)
    return str(result["cid"])


def provide_status(home: Home, cid: str) -> dict[str, Any]:
    _, status = timed_call(home, "status", {})
    return next((s for s in status["shares"] if s["cid"] == cid), {})


@dataclass(frozen=True)
class Findable:
    """One time-until-findable, and what it is made of: the share call, then each
    `find` until the first with a provider (its own duration last)."""

    seconds: float
    share_s: float
    finds_s: tuple[float, ...]
    # Peers the last find's lookup asked (`find`'s `lookup.queried`).
    queried: int = 0

    def parts(self) -> str:
        empty = self.finds_s[:-1]
        return (
            f"{self.seconds:.2f} s = share {self.share_s:.2f} s + {len(empty)} empty find(s)"
            f" {sum(empty):.2f} s ({', '.join(f'{x:.2f}' for x in empty) or '-'})"
            + (
                f" + the find that answered {self.finds_s[-1]:.2f} s, asking {self.queried} peers"
                if math.isfinite(self.seconds)
                else f" + the last find {self.finds_s[-1]:.2f} s; none answered"
            )
        )


def until_findable(root: Path, sharer: Home, finder: Home, index: int) -> Findable:
    t0 = time.perf_counter()
    cid = share_file(root, sharer, index)
    share_s = time.perf_counter() - t0
    attempts: list[dict[str, Any]] = []
    finds: list[float] = []
    while time.perf_counter() - t0 < FINDABLE_DEADLINE:
        elapsed, result = timed_call(finder, "find", {"cid": cid, "timeout": FIND_TIMEOUT})
        finds.append(elapsed)
        assert isinstance(result, dict)
        if result["providers"]:
            queried = int(result["lookup"]["queried"])
            return Findable(time.perf_counter() - t0, share_s, tuple(finds), queried)
        attempts.append(result.get("lookup", {}))
    # Say why, so the defect can be chased: did the announcement go out, and how
    # far did each find get?
    print(
        f"  not findable in {FINDABLE_DEADLINE:g} s: {cid} from {sharer.root.name} "
        f"(status {provide_status(sharer, cid)}), finder {finder.root.name}, "
        f"{len(attempts)} lookups, the last {attempts[-1] if attempts else None}",
        file=sys.stderr,
        flush=True,
    )
    return Findable(float("inf"), share_s, tuple(finds))


@dataclass
class SizeResult:
    size: int
    startup_s: float
    rtt_ms: float
    # Routing-table sizes of the daemons when the rounds begin, smallest first.
    tables: list[int] = field(default_factory=list)
    findable: list[float] = field(default_factory=list)
    slowest: Findable | None = None
    lookups: list[float] = field(default_factory=list)
    hops: list[int] = field(default_factory=list)
    asked: int = 0
    fetches: list[float] = field(default_factory=list)
    fetched_ok: int = 0
    # Per timed find: GET_PROVIDERS requests answered, and their bytes both ways.
    messages: list[int] = field(default_factory=list)
    message_bytes: list[int] = field(default_factory=list)
    # Per provide: FIND_NODE requests and ADD_PROVIDERs sent, and their bytes both ways.
    provide_messages: list[float] = field(default_factory=list)
    provide_bytes: list[float] = field(default_factory=list)


def run_size(size: int, rounds: int, rng: random.Random) -> SizeResult:
    with tempfile.TemporaryDirectory(prefix="p2ps-dht-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        homes = [Home(root / f"n{i}") for i in range(size)]
        init_home(homes[0])
        boot = stack.enter_context(DaemonProcess(homes[0], log_level="warning"))
        boot.start(START_TIMEOUT)
        others = []
        for home in homes[1:]:
            init_home(home, bootstrap=(boot.info["addrs"][0],))
            others.append(stack.enter_context(DaemonProcess(home, log_level="warning")))
        stack.callback(stop_all, [boot, *others])
        t0 = time.perf_counter()
        start_all(others, timeout=START_TIMEOUT)
        startup = time.perf_counter() - t0
        rtt = [timed_call(rng.choice(homes), "id", {})[0] for _ in range(rounds)]
        result = SizeResult(size, startup, statistics.median(rtt) * 1000)
        result.tables = sorted(timed_call(home, "status", {})[1]["routing_table"] for home in homes)
        for index in range(rounds):
            sharer, finder = rng.sample(homes, 2)
            findable = until_findable(root, sharer, finder, index)
            result.findable.append(findable.seconds)
            if result.slowest is None or findable.seconds > result.slowest.seconds:
                result.slowest = findable
        cids: list[tuple[str, Home]] = []
        for index in range(rounds):
            sharer, finder = rng.sample(homes, 2)
            before = dht_counters(sharer)
            cid = share_file(root, sharer, rounds + index)
            wait_announced(sharer, cid)
            counted_provide(sharer, before, result)
            cids.append((cid, finder))
        for cid, finder in cids:
            elapsed, found = counted_find(finder, cid, result)
            if found["providers"]:
                result.lookups.append(elapsed)
                result.hops.append(int(found["lookup"]["hops"]))
        result.asked = len(cids)
        return result


def run_netns_size(
    net: netlab.DelayNetwork, size: int, rounds: int, rng: random.Random
) -> SizeResult:
    """``size`` daemons in the first ``size`` namespaces of ``net``."""
    with tempfile.TemporaryDirectory(prefix="p2ps-dhtns-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        homes = [Home(root / f"n{i}") for i in range(size)]
        listen = [f"/ip4/{netlab.node_ip(i)}/tcp/4001" for i in range(size)]

        def daemon(index: int) -> DaemonProcess:
            return stack.enter_context(
                DaemonProcess(homes[index], log_level="warning", wrapper=net.wrapper(index))
            )

        init_home(homes[0], listen=(listen[0],))
        first = daemon(0)
        first.start(START_TIMEOUT)
        boots = min(BOOTSTRAP_NODES, size)
        for index in range(1, boots):
            init_home(homes[index], listen=(listen[index],), bootstrap=(first.info["addrs"][0],))
        t0 = time.perf_counter()
        started = [daemon(i) for i in range(1, boots)]
        start_all(started, timeout=START_TIMEOUT)
        bootstrap = tuple(
            f"{listen[i]}/p2p/{timed_call(homes[i], 'id', {})[1]['peer_id']}" for i in range(boots)
        )
        for index in range(boots, size):
            init_home(homes[index], listen=(listen[index],), bootstrap=bootstrap)
        rest = [daemon(i) for i in range(boots, size)]
        stack.callback(stop_all, [first, *started, *rest])
        start_all(rest, timeout=START_TIMEOUT)
        startup = time.perf_counter() - t0
        rtt = [timed_call(rng.choice(homes), "id", {})[0] for _ in range(rounds)]
        result = SizeResult(size, startup, statistics.median(rtt) * 1000)
        contents: list[tuple[str, bytes]] = []
        counters = [dht_counters(home) for home in homes]
        for index, home in enumerate(homes):
            cid = share_file(root, home, index, NETNS_SHARE_BYTES)
            contents.append((cid, (root / f"content-{index}.bin").read_bytes()))
        for home, (cid, _), before in zip(homes, contents, counters, strict=True):
            wait_announced(home, cid, limit=120)
            counted_provide(home, before, result)
        for index in range(rounds):
            s, f = rng.sample(range(size), 2)
            cid, data = contents[s]
            elapsed, found = counted_find(homes[f], cid, result)
            if not found["providers"]:
                print(f"  netns find failed: {found}", file=sys.stderr, flush=True)
                continue
            result.lookups.append(elapsed)
            result.hops.append(int(found["lookup"]["hops"]))
            dest = root / f"got-{index}.bin"
            t1 = time.perf_counter()
            timed_call(homes[f], "get", {"ref": cid, "dest": str(dest)})
            result.fetches.append(time.perf_counter() - t1)
            result.fetched_ok += dest.read_bytes() == data
            dest.unlink()
        result.asked = rounds
        # The baseline: libp2p ping round trips measured by the daemons themselves.
        pings = []
        for home in rng.sample(homes, min(5, size)):
            _, peers = timed_call(home, "peers", {})
            pings += [p["latency_ms"] for p in peers["peers"] if p["latency_ms"] is not None]
        result.rtt_ms = median(pings)
        return result


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "none"


def loopback_rows(results: list[SizeResult], target_size: int = 50) -> list[Row]:
    rows = []
    for r in results:
        at_target = r.size >= target_size
        never = sum(math.isinf(x) for x in r.findable)
        worst = max(r.findable) if r.findable else float("inf")
        p50 = median(r.findable)
        rows.append(
            Row(
                f"DHT loopback {r.size} nodes: new share findable, p50 / max",
                f"{p50:.2f} s / "
                + (f"{worst:.2f} s" if never == 0 else f"never ({never} of {len(r.findable)})"),
                f"control-API round trip {r.rtt_ms:.1f} ms; start-up {r.startup_s:.0f} s; "
                f"routing tables at the start min / p50 {_table_sizes(r.tables)}",
                "<= 1 s (50 nodes)" if at_target else "-",
                (p50 <= 1.0 and worst <= 1.0) if at_target else None,
            )
        )
        if r.slowest is not None:
            name = f"DHT loopback {r.size} nodes: the slowest findable, made of"
            rows.append(Row(name, r.slowest.parts()))
        find_p50 = median(r.lookups) * 1000
        rows.append(
            Row(
                f"DHT loopback {r.size} nodes: find p50 / p95, hops p50 / max",
                f"{_ms(r.lookups, 0.5)} / {_ms(r.lookups, 0.95)} ms, "
                f"hops {_hops(r.hops)}, answered {len(r.lookups)}/{r.asked}",
                f"control-API round trip {r.rtt_ms:.1f} ms",
                "p50 <= 500 ms (50 nodes)" if at_target else "-",
                (find_p50 <= 500 and len(r.lookups) == r.asked) if at_target else None,
            )
        )
        rows += message_rows(r, "DHT loopback")
    return rows


def message_rows(r: SizeResult, name: str) -> list[Row]:
    """What one find and one provide cost on the wire, from the daemons' DHT counters."""
    return [
        _cost_row(
            f"{name} {r.size} nodes: DHT messages / KiB per find",
            r.messages,
            r.message_bytes,
            "GET_PROVIDERS requests and answers, counted by the finder "
            "(p2pshare_dht_messages_total)",
        ),
        _cost_row(
            f"{name} {r.size} nodes: DHT messages / KiB per provide",
            r.provide_messages,
            r.provide_bytes,
            "FIND_NODE requests and answers of the lookup for the closest peers, and the "
            "ADD_PROVIDERs, counted by the sharer (p2pshare_dht_provide_messages_total)",
        ),
    ]


def _cost_row(name: str, messages: Sequence[float], nbytes: Sequence[float], counted: str) -> Row:
    if not messages:
        return Row(name, "none")
    kib = [b / 1024 for b in nbytes]
    return Row(
        f"{name}, p50 / max",
        f"{statistics.median(messages):g} / {max(messages):g} messages, "
        f"{statistics.median(kib):.1f} / {max(kib):.1f} KiB",
        counted,
    )


def _table_sizes(sizes: list[int]) -> str:
    return f"{min(sizes)} / {statistics.median(sizes):g}" if sizes else "none"


def _hops(hops: list[int]) -> str:
    return f"{statistics.median(hops):g} / {max(hops)}" if hops else "none"


def netns_rows(results: list[SizeResult], target_size: int = 50) -> list[Row]:
    rows = []
    for r in results:
        at_target = r.size >= target_size
        find_p50 = median(r.lookups) * 1000
        rows.append(
            Row(
                f"DHT netns {r.size} nodes, 20 ms RTT: find p50 / p95, hops p50 / max",
                f"{_ms(r.lookups, 0.5)} / {_ms(r.lookups, 0.95)} ms, "
                f"hops {_hops(r.hops)}, answered {len(r.lookups)}/{r.asked}",
                f"libp2p ping RTT p50 {r.rtt_ms:.1f} ms; log2 N = {math.log2(r.size):.1f}",
                "p50 <= 500 ms (50 nodes)" if at_target else "-",
                (find_p50 <= 500 and len(r.lookups) == r.asked) if at_target else None,
            )
        )
        rows.append(
            Row(
                f"DHT netns {r.size} nodes: fetch 64 KiB after find, p50 / max",
                f"{_ms(r.fetches, 0.5)} / {_ms(r.fetches, 1.0)} ms, "
                f"verified {r.fetched_ok}/{r.asked}",
                f"libp2p ping RTT p50 {r.rtt_ms:.1f} ms; start-up {r.startup_s:.0f} s",
                "all fetched and verified",
                r.fetched_ok == r.asked,
            )
        )
        rows += message_rows(r, "DHT netns")
    return rows


def measure(
    quick: bool,
    *,
    sizes: list[int] | None = None,
    rounds: int | None = None,
    loopback: bool = True,
    netns: bool = True,
    seed: int = 1,
) -> list[Row]:
    """Loopback and (where the machine allows) namespace figures for each size."""
    sizes = sizes or ([10] if quick else [10, 25, 50])
    rounds = rounds or (5 if quick else 20)
    rng = random.Random(seed)
    rows: list[Row] = []
    if loopback:
        for size in sizes:
            # A network too slow to start on a loaded machine must not lose the sizes
            # measured before it.
            try:
                rows += loopback_rows([run_size(size, rounds, rng)])
            except DaemonStartError as exc:
                rows.append(Row(f"DHT loopback {size} nodes", f"failed: {exc}"[:200], met=False))
    if netns:
        reason = netlab.unavailable_reason()
        if reason:
            rows.append(Row("DHT netns", f"skipped: {reason}"))
        else:
            with netlab.DelayNetwork(max(sizes), ONE_WAY_MS) as net:
                for size in sizes:
                    try:
                        rows += netns_rows([run_netns_size(net, size, rounds, rng)])
                    except DaemonStartError as exc:
                        failed = f"failed: {exc}"[:200]
                        rows.append(Row(f"DHT netns {size} nodes", failed, met=False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=None, help="comma-separated, e.g. 10,25,50")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="10 nodes and 5 rounds")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--netns", action="store_true", help="namespace mode only")
    mode.add_argument("--both", action="store_true", help="loopback and namespace modes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print_table(
        measure(
            args.quick,
            sizes=sizes,
            rounds=args.rounds,
            loopback=not args.netns,
            netns=args.netns or args.both,
            seed=args.seed,
        )
    )


if __name__ == "__main__":
    main()
