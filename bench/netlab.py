"""Network namespaces joined by a delay line, for benchmarks with many nodes and real latency.

Each node gets its own network namespace with one TUN device (address 10.77.x.y/16).
A router process owns the other end of every TUN device: it reads each IPv4 packet,
holds it for ``one_way_ms`` and writes it into the TUN device of the namespace that
owns the destination address. Every node-to-node packet so crosses one hop with the
same delay, i.e. a round trip of 2 x ``one_way_ms``.

Why not ``tc qdisc ... netem delay`` on veth pairs: the kernel of these VMs has no
sch_netem ("Specified qdisc kind is unknown"; tbf and htb exist but only shape rate),
and modules cannot be loaded. The delay line needs only /dev/net/tun and ``ip netns``.

Needs root. Everything is confined to this machine: the namespaces have no route out,
only the 10.77.0.0/16 subnet that the router connects. Namespaces are removed on exit
(and stale ones of a killed earlier run at the next start).

Run alone to check the delay line: .venv/bin/python bench/netlab.py --check
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

PREFIX = "p2pb"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Large frames: fewer packets for the Python router to move per MB.
MTU = 65000
READS_PER_WAKE = 64
# The router exits if its parent has gone for this long (its stdin also closes then).
ROUTER_READY_S = 60.0


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def node_ip(index: int) -> str:
    return f"10.77.{index // 200}.{index % 200 + 1}"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the namespace mode, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, /dev/net/tun)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return None


def remove_stale() -> None:
    """Delete namespaces left by an earlier run whose process no longer exists."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("n", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class DelayNetwork:
    """``count`` namespaces, each with one node address, behind a delay-line router."""

    def __init__(self, count: int, one_way_ms: float) -> None:
        self.count = count
        self.one_way_ms = one_way_ms
        self.names = [f"{PREFIX}{os.getpid()}n{i}" for i in range(count)]
        self._router: subprocess.Popen[bytes] | None = None

    def wrapper(self, index: int) -> tuple[str, ...]:
        """The command prefix that runs a program inside node ``index``'s namespace."""
        return ("ip", "netns", "exec", self.names[index])

    def __enter__(self) -> DelayNetwork:
        remove_stale()
        try:
            for name in self.names:
                _sh("ip", "netns", "add", name)
                _sh("ip", "-n", name, "link", "set", "lo", "up")
            self._router = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--router",
                    str(self.one_way_ms),
                    *[f"{name}={node_ip(i)}" for i, name in enumerate(self.names)],
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert self._router.stdout is not None
            ready, _, _ = select.select([self._router.stdout], [], [], ROUTER_READY_S)
            if not ready or self._router.stdout.readline().strip() != b"ready":
                raise RuntimeError("the delay-line router did not start")
            for index, name in enumerate(self.names):
                dev = f"t{index}"
                _sh("ip", "-n", name, "addr", "add", f"{node_ip(index)}/16", "dev", dev)
                _sh("ip", "-n", name, "link", "set", dev, "mtu", str(MTU), "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._router is not None:
            if self._router.stdin is not None:
                self._router.stdin.close()  # the router's signal to exit
            try:
                self._router.wait(10)
            except subprocess.TimeoutExpired:
                self._router.kill()
                self._router.wait()
            if self._router.stdout is not None:
                self._router.stdout.close()
            self._router = None
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def route(one_way_ms: float, nodes: list[tuple[str, str]]) -> None:
    """The router: one TUN device per namespace, each packet delivered ``one_way_ms`` late.

    Runs until its stdin closes (the parent's signal, or the parent died). A packet
    that finds the destination's queue full is dropped, as a real link would.
    """
    delay = one_way_ms / 1000
    by_ip: dict[bytes, int] = {}
    fds: list[int] = []
    for index, (namespace, ip) in enumerate(nodes):
        dev = f"t{index}"
        fd = _open_tun(dev)
        _sh("ip", "link", "set", "dev", dev, "netns", namespace)
        by_ip[socket.inet_aton(ip)] = fd
        fds.append(fd)
    poller = select.epoll()
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN | select.EPOLLHUP)
    print("ready", flush=True)
    # One constant delay keeps due times in arrival order: a FIFO is enough.
    pending: collections.deque[tuple[float, int, bytes]] = collections.deque()
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else 1.0
        for fd, _ in poller.poll(timeout):
            if fd == stdin:
                return
            for _ in range(READS_PER_WAKE):
                try:
                    packet = os.read(fd, MTU + 100)
                except BlockingIOError:
                    break
                # IPv4 only: the destination address is at bytes 16..20.
                if packet and packet[0] >> 4 == 4 and (dst := by_ip.get(packet[16:20])):
                    pending.append((time.monotonic() + delay, dst, packet))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, dst, packet = pending.popleft()
            # A full receive queue drops the packet, as a real link would; TCP resends.
            with contextlib.suppress(BlockingIOError):
                os.write(dst, packet)


def check(one_way_ms: float) -> None:
    """Two namespaces, one TCP echo: prints the round trip through the delay line."""
    server_code = (
        "import socket\n"
        f"s = socket.create_server(('{node_ip(1)}', 5000))\n"
        "c, _ = s.accept()\n"
        "while d := c.recv(100):\n"
        "    c.sendall(d)\n"
    )
    client_code = (
        "import socket, time\n"
        f"c = socket.create_connection(('{node_ip(1)}', 5000), timeout=10)\n"
        "for _ in range(5):\n"
        "    t0 = time.perf_counter(); c.sendall(b'x'); c.recv(10)\n"
        "    print(f'echo round trip {(time.perf_counter() - t0) * 1000:.1f} ms')\n"
    )
    with DelayNetwork(2, one_way_ms) as net:
        server = subprocess.Popen([*net.wrapper(1), sys.executable, "-c", server_code])
        try:
            time.sleep(0.5)
            subprocess.run(
                [*net.wrapper(0), sys.executable, "-c", client_code], check=True, timeout=30
            )
        finally:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="measure one echo round trip")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    parser.add_argument("--router", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.router:
        one_way, *pairs = args.router
        route(float(one_way), [(p.split("=")[0], p.split("=")[1]) for p in pairs])
    elif args.check:
        reason = unavailable_reason()
        if reason:
            raise SystemExit(f"netlab: {reason}")
        check(args.delay_ms)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
