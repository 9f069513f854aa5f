"""Two home networks behind two NAT routers and one public node, in network namespaces.

Topology (all addresses exist only inside the namespaces this script creates)::

    lan1 (A, 10.0.1.2) -- router1 (10.0.1.1 | 198.51.100.2) --+
                                                               +-- br0 in pub (198.51.100.1)
    lan2 (B, 10.0.2.2) -- router2 (10.0.2.1 | 198.51.100.3) --+

The "internet" is 198.51.100.0/24 (TEST-NET-2, a documentation range) on a bridge in
the pub namespace, which runs the public relay/bootstrap node. Each router masquerades
its LAN behind its public address (iptables MASQUERADE) and forwards inbound packets
only for connections the LAN opened (conntrack ESTABLISHED,RELATED), as a home router
does. ``--nat cone`` keeps source ports where it can (Linux's default: endpoint-
independent mapping, so TCP hole punching can work); ``--nat symmetric`` adds
``--random-fully`` (a new random port per connection, where hole punching cannot work).

No namespace has a route out of the lab. Needs root, ``ip`` and ``iptables``; without
them the script says why and exits 0 (``skipped``). Everything is removed at the end,
also after a failure, and namespaces left by a killed earlier run are removed at start.

Run: .venv/bin/python bench/natlab.py [--nat cone|symmetric] [--b-without-relay]
                                      [--port-mapping off|natpmp|upnp|auto]

``--b-without-relay`` starts B with pub as bootstrap node only, no ``relays``: B can
reach A only through the circuit in A's provider record (held by pub, a DHT node).

``--port-mapping METHOD`` runs bench/lab_gateway.py on each router (NAT-PMP and a
minimal UPnP IGD on the inside address, installing real DNAT rules) and starts A with
``[network] port_mapping = METHOD`` (NAT-PMP asks the default route's gateway; UPnP is
given the router's root description URL): B then reaches A at the mapped address,
directly, and the report says how long A took to become public.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pshare.config import NetworkConfig
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, wait_announced

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

PREFIX = "p2pnat"
PUB_IP = "198.51.100.1"
WAN_IPS = {"router1": "198.51.100.2", "router2": "198.51.100.3"}
LANS = {"router1": ("lan1", "10.0.1"), "router2": ("lan2", "10.0.2")}
PORT = 4001
STEP_S = 30.0


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=STEP_S)


def unavailable_reason() -> str | None:
    """Why this machine cannot build the lab, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (apt-get install iproute2 iptables)"
    return None


def remove_stale() -> None:
    """Delete namespaces of an earlier run whose process no longer exists."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=STEP_S
    ).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class NatLab:
    """The five namespaces: pub, router1, lan1, router2, lan2."""

    ROLES = ("pub", "router1", "lan1", "router2", "lan2")

    def __init__(self, nat: str = "cone") -> None:
        self.nat = nat
        self.names = {role: f"{PREFIX}{os.getpid()}-{role}" for role in self.ROLES}

    def wrapper(self, role: str) -> tuple[str, ...]:
        """The command prefix that runs a program in ``role``'s namespace."""
        return ("ip", "netns", "exec", self.names[role])

    def _in(self, role: str, *args: str) -> None:
        _sh(*self.wrapper(role), *args)

    def _veth(self, a: str, a_dev: str, b: str, b_dev: str) -> None:
        tmp_a, tmp_b = f"nla{os.getpid() % 100000}", f"nlb{os.getpid() % 100000}"
        _sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        _sh("ip", "link", "set", tmp_a, "netns", self.names[a], "name", a_dev)
        _sh("ip", "link", "set", tmp_b, "netns", self.names[b], "name", b_dev)

    def _up(self, role: str, dev: str, cidr: str | None = None) -> None:
        if cidr:
            _sh("ip", "-n", self.names[role], "addr", "add", cidr, "dev", dev)
        _sh("ip", "-n", self.names[role], "link", "set", dev, "up")

    def _build(self) -> None:
        for role, name in self.names.items():
            _sh("ip", "netns", "add", name)
            self._up(role, "lo")
        pub = self.names["pub"]
        _sh("ip", "-n", pub, "link", "add", "br0", "type", "bridge")
        self._up("pub", "br0", f"{PUB_IP}/24")
        for router, wan_ip in WAN_IPS.items():
            lan, net = LANS[router]
            self._veth(router, "wan", "pub", f"to-{router}")
            _sh("ip", "-n", pub, "link", "set", f"to-{router}", "master", "br0")
            self._up("pub", f"to-{router}")
            self._up(router, "wan", f"{wan_ip}/24")
            self._veth(router, "lan", lan, "eth0")
            self._up(router, "lan", f"{net}.1/24")
            self._up(lan, "eth0", f"{net}.2/24")
            _sh("ip", "-n", self.names[lan], "route", "add", "default", "via", f"{net}.1")
            self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan"]
            masquerade += ["-j", "MASQUERADE"]
            if self.nat == "symmetric":
                masquerade.append("--random-fully")
            self._in(router, *masquerade)
            # A home router drops unsolicited packets rather than answering with a RST:
            # a RST would abort the other side's half of a simultaneous open.
            self._in(
                router,
                *("iptables", "-A", "INPUT", "-i", "wan", "-m", "conntrack"),
                *("!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP"),
            )
            self._in(router, "iptables", "-P", "FORWARD", "DROP")
            self._in(router, "iptables", "-A", "FORWARD", "-i", "lan", "-j", "ACCEPT")
            self._in(
                router,
                *("iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack"),
                *("--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            )

    def __enter__(self) -> NatLab:
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


GATEWAY = Path(__file__).with_name("lab_gateway.py")


@contextlib.contextmanager
def _gateway(lab: NatLab, router: str) -> Iterator[None]:
    """bench/lab_gateway.py on ``router`` until the ``with`` ends (SIGTERM removes its rules)."""
    inside = f"{LANS[router][1]}.1"
    command = [sys.executable, str(GATEWAY), "--inside", inside, "--external", WAN_IPS[router]]
    process = subprocess.Popen(
        [*lab.wrapper(router), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"lab gateway on {router} did not start: {line}")
        yield
    finally:
        process.terminate()
        process.wait(STEP_S)


def gateways(lab: NatLab) -> ExitStack:
    """The port mapping services of both routers, stopped when the stack closes."""
    stack = ExitStack()
    for router in WAN_IPS:
        stack.enter_context(_gateway(lab, router))
    return stack


def mapping_settings(method: str) -> dict[str, Any]:
    """A's [network] settings for ``--port-mapping METHOD``."""
    if method == "off":
        return {}
    return {
        "port_mapping": method,
        "upnp_root_url": f"http://{LANS['router1'][1]}.1:5000/rootDesc.xml",
    }


class Nodes:
    """The p2pshare daemons of the lab: pub, A (lan1) and B (lan2), in temporary homes."""

    def __init__(self, lab: NatLab, root: Path) -> None:
        self.lab = lab
        self.root = root
        self.daemons: dict[str, DaemonProcess] = {}
        self.keep_logs: Path | None = None

    def start(self, name: str, role: str, port: int = PORT, **network: Any) -> DaemonProcess:
        home = Home(self.root / name)
        if not home.key_path.exists():
            init_home(home, listen=(f"/ip4/0.0.0.0/tcp/{port}",), **network)
        else:
            self._set_listen(home, port)
        daemon = DaemonProcess(home, wrapper=self.lab.wrapper(role))
        self.daemons[name] = daemon
        daemon.start()
        return daemon

    @staticmethod
    def _set_listen(home: Home, port: int) -> None:
        lines = home.config_path.read_text().splitlines()
        # The first `listen =` is [network]'s; [metrics] has one too.
        first = next(i for i, line in enumerate(lines) if line.startswith("listen ="))
        lines[first] = f'listen = ["/ip4/0.0.0.0/tcp/{port}"]'
        home.config_path.write_text("\n".join(lines) + "\n")

    def cli(self, name: str, *args: str, timeout: float = 60.0) -> tuple[int, Any]:
        """Run ``p2pshare --json ARGS`` for node ``name``: (exit status, JSON or stderr)."""
        result = run_cli(self.daemons[name].home, *args, "--json", timeout=timeout)
        try:
            return result.returncode, json.loads(result.stdout)
        except ValueError:
            return result.returncode, result.stderr.strip()

    def stop_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.__exit__(None, None, None)
        if self.keep_logs is not None:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for name, daemon in self.daemons.items():
                shutil.copy(daemon.stderr_path, self.keep_logs / f"{name}.stderr")


def _dial(nodes: Nodes, name: str, addr: str) -> str:
    """``ok`` if node ``name`` can connect to ``addr``, else the first line of the error."""
    status, out = nodes.cli(name, "connect", addr, timeout=STEP_S)
    return "ok" if status == 0 else str(out).splitlines()[0][:140]


def _public_guess(addr: str, router: str) -> str:
    """``addr`` with its IP replaced by ``router``'s public one: what a peer could try."""
    parts = addr.split("/")
    parts[2] = WAN_IPS[router]
    return "/".join(parts)


def baseline(lab: NatLab, root: Path) -> dict[str, str]:
    """Today's behaviour: A and B reach pub, B cannot dial A at any address it could know."""
    nodes = Nodes(lab, root)
    try:
        pub = nodes.start("pub", "pub")
        pub_addr = f"/ip4/{PUB_IP}/tcp/{PORT}/p2p/{pub.info['peer_id']}"
        a = nodes.start("a", "lan1")
        nodes.start("b", "lan2")
        a_private = f"/ip4/{LANS['router1'][1]}.2/tcp/{PORT}/p2p/{a.info['peer_id']}"
        return {
            "A -> pub": _dial(nodes, "a", pub_addr),
            "B -> pub": _dial(nodes, "b", pub_addr),
            "B -> A (A's private address)": _dial(nodes, "b", a_private),
            "B -> A (router1's public address, same port)": _dial(
                nodes, "b", _public_guess(a_private, "router1")
            ),
        }
    finally:
        nodes.stop_all()


NAT_FIELDS = ("reachability", "confirmed_addrs", "relay_service", "uses_relay", "relayed_at")
SETTLE_S = 40.0
RECONNECT_BOUND_S = 30.0
HOLE_PUNCH_S = 20.0


def _wait_for(what: str, probe: Callable[[], bool], limit: float) -> float:
    """Poll ``probe`` every 0.5 s until it holds; the seconds it took. Fails at ``limit``."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > limit:
            raise RuntimeError(f"{what}: not within {limit:g} s")
        time.sleep(0.5)
    return time.monotonic() - started


def _nat_status(nodes: Nodes, name: str) -> dict[str, Any]:
    status, out = nodes.cli(name, "status")
    if status != 0:
        raise RuntimeError(f"status of {name} failed: {out}")
    return {k: out.get(k) for k in NAT_FIELDS} | {"port_mapping": out["port_mapping"]["line"]}


def _public_mapped(nodes: Nodes, name: str) -> bool:
    """Whether AutoNAT confirmed ``name`` public at the address its router mapped."""
    status, out = nodes.cli(name, "status")
    if status != 0:
        raise RuntimeError(f"status of {name} failed: {out}")
    verdicts = out["port_mapping"]["addrs"].values()
    return out["reachability"] == "public" and "confirmed" in verdicts


def _settled(nodes: Nodes, name: str, *, relayed: bool = True) -> bool:
    status = _nat_status(nodes, name)
    return (bool(status["uses_relay"]) or not relayed) and status["reachability"] != "unknown"


def _get_within(
    nodes: Nodes, name: str, cid: str, dest: Path, expected: bytes, deadline: float
) -> dict[str, Any]:
    """``_get``, repeated (as a user would) until it works or ``deadline`` passes."""
    attempts = 0
    while True:
        attempts += 1
        try:
            return _get(nodes, name, cid, dest, expected) | {"attempts": attempts}
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
        nodes.cli(name, "downloads", "cancel", cid)
        time.sleep(1)


def _path(nodes: Nodes, name: str, peer: str) -> str | None:
    status, out = nodes.cli(name, "peers")
    if status != 0:
        raise RuntimeError(f"peers on {name} failed: {out}")
    return next((p["path"] for p in out["peers"] if p["peer_id"] == peer), None)


def _hole_punch(nodes: Nodes) -> str:
    """Whether B's connection to A turns direct (DCUtR) within HOLE_PUNCH_S."""
    a = nodes.daemons["a"].info["peer_id"]
    try:
        took = _wait_for("hole punching", lambda: _path(nodes, "b", a) == "direct", HOLE_PUNCH_S)
    except RuntimeError:
        return f"{_path(nodes, 'b', a)} (no hole punched within {HOLE_PUNCH_S:g} s)"
    return f"direct: hole punched {took:.1f} s after the get"


def _get(nodes: Nodes, name: str, cid: str, dest: Path, expected: bytes) -> dict[str, Any]:
    """``get`` CID on node ``name``; its path, time and MB/s, the bytes checked.

    A node copies content it holds from its own store; what an earlier get left there
    is unshared first (the file stays), so every get here goes over the network."""
    nodes.cli(name, "unshare", cid)
    status, out = nodes.cli(name, "get", cid, "-o", str(dest), timeout=120)
    if status != 0:
        raise RuntimeError(f"get on {name} failed: {out}")
    if dest.read_bytes() != expected:
        raise RuntimeError(f"get on {name}: the file differs from the shared one")
    elapsed = float(out["elapsed_s"])
    return {
        "paths": sorted(set(out["paths"].values())),
        "elapsed_s": round(elapsed, 2),
        "MB/s": round(len(expected) / elapsed / 1e6, 1),
        "verified": True,
    }


class Report(dict[str, Any]):
    """A dict that prints each entry as it is made, so a failed run shows how far it got."""

    def __setitem__(self, key: str, value: Any) -> None:
        print(f"{key:<44} {json.dumps(value)}", flush=True)
        super().__setitem__(key, value)


def through_nat(
    lab: NatLab,
    root: Path,
    size: int,
    keep_logs: Path | None = None,
    circuit_bytes: int = NetworkConfig.relay_circuit_bytes,
    *,
    b_relays: bool = True,
    port_mapping: str = "off",
) -> dict[str, Any]:
    """A shares, B behind the other NAT gets it (relayed, then direct where DCUtR works);
    A restarts on a new port and B gets from it again. Without ``b_relays`` B names no
    relay: it reaches A only through the circuit A's provider record carries. With
    ``port_mapping`` A asks its router to forward its ports (the lab gateways must run)."""
    nodes = Nodes(lab, root)
    nodes.keep_logs = keep_logs
    report = Report()
    try:
        pub = nodes.start("pub", "pub", relay_service=True, relay_circuit_bytes=circuit_bytes)
        pub_addr = f"/ip4/{PUB_IP}/tcp/{PORT}/p2p/{pub.info['peer_id']}"
        mapping = mapping_settings(port_mapping)
        a_started = time.monotonic()
        nodes.start("a", "lan1", bootstrap=(pub_addr,), relays=(pub_addr,), **mapping)
        if mapping:
            # Polled with `status` every 0.5 s: up to about a second late.
            _wait_for(
                "A public at its mapped address", lambda: _public_mapped(nodes, "a"), SETTLE_S
            )
            report["a public at its mapping, s after start"] = round(
                time.monotonic() - a_started, 1
            )
        nodes.start("b", "lan2", bootstrap=(pub_addr,), relays=(pub_addr,) if b_relays else ())
        for name in ("a", "b"):
            relayed = name == "a" or b_relays
            took = _wait_for(
                f"{name} holds a relay slot (if it has one) and knows its reachability",
                functools.partial(_settled, nodes, name, relayed=relayed),
                SETTLE_S,
            )
            report[f"{name} settled after s"] = round(took, 1)
        for name in ("pub", "a", "b"):
            report[f"status {name}"] = _nat_status(nodes, name)
        data = os.urandom(size)
        source = root / "shared.bin"
        source.write_bytes(data)
        status, shared = nodes.cli("a", "share", str(source))
        if status != 0:
            raise RuntimeError(f"share on a failed: {shared}")
        cid = shared["cid"]
        wait_announced(nodes.daemons["a"].home, cid)
        status, found = nodes.cli("b", "find", cid)
        report["b finds a at"] = found["providers"][0]["addrs"] if status == 0 else found
        report["get 1 (first contact)"] = _get(nodes, "b", cid, root / "got1.bin", data)
        a_id = nodes.daemons["a"].info["peer_id"]
        report["B -> A connection after get 1"] = _path(nodes, "b", a_id)
        report["B -> A connection"] = _hole_punch(nodes)
        report["get 2 (after hole punching had its chance)"] = _get(
            nodes, "b", cid, root / "got2.bin", data
        )
        nodes.daemons["a"].stop()
        restarted = time.monotonic()
        nodes.start("a", "lan1", port=PORT + 1)
        report["get 3 (A restarted on a new port)"] = _get_within(
            nodes, "b", cid, root / "got3.bin", data, restarted + RECONNECT_BOUND_S
        )
        took = time.monotonic() - restarted
        report["B reached restarted A after s"] = round(took, 1)
        if took > RECONNECT_BOUND_S:
            raise RuntimeError(f"B reached the restarted A only after {took:.1f} s")
        return report
    except BaseException:
        for name, daemon in nodes.daemons.items():
            tail = Path(daemon.stderr_path).read_text(errors="replace")[-3000:]
            print(f"--- daemon {name} stderr (tail):\n{tail}", file=sys.stderr)
        raise
    finally:
        nodes.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nat", choices=("cone", "symmetric"), default="cone")
    parser.add_argument("--size-mib", type=int, default=16, help="size of the shared file")
    parser.add_argument(
        "--circuit-mib",
        type=int,
        default=NetworkConfig.relay_circuit_bytes >> 20,
        help="the relay's relay_circuit_bytes, in MiB",
    )
    parser.add_argument(
        "--b-without-relay",
        action="store_true",
        help="B names no relay: it reaches A only through the circuit in A's DHT record",
    )
    parser.add_argument(
        "--port-mapping",
        choices=("off", "natpmp", "upnp", "auto"),
        default="off",
        help="run a NAT-PMP/UPnP gateway on each router and let A map its ports this way",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' stderr here")
    parser.add_argument(
        "--baseline", action="store_true", help="only show who can dial whom, nothing else"
    )
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"natlab: skipped: {reason}")
        return
    started = time.monotonic()
    with ExitStack() as stack:
        lab = stack.enter_context(NatLab(args.nat))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="p2pnat-"))
        if args.port_mapping != "off":
            stack.enter_context(gateways(lab))
        took = time.monotonic() - started
        print(f"lab up ({args.nat} NAT, port mapping {args.port_mapping}) in {took:.1f} s")
        if args.baseline:
            for what, result in baseline(lab, Path(tmp)).items():
                print(f"{what:<48} {result}")
        else:
            through_nat(
                lab,
                Path(tmp),
                args.size_mib << 20,
                args.keep_logs,
                args.circuit_mib << 20,
                b_relays=not args.b_without_relay,
                port_mapping=args.port_mapping,
            )
    print(f"done in {time.monotonic() - started:.1f} s; namespaces removed")


if __name__ == "__main__":
    main()
