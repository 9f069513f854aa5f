"""What py-libp2p 0.8.1's relay, DCUtR and AutoNAT do behind the lab's NAT routers.

Runs bare libp2p hosts (built like p2pshare's: Noise, Yamux, one connection per peer)
in the namespaces of bench/natlab.py: a relay (hop) and AutoNAT server on pub, a node
A in lan1 that reserves a slot on the relay, and a node B in lan2 that dials A through
the relay, asks py-libp2p's DCUtR to punch a hole and reports every step as JSON.

Run: .venv/bin/python bench/natlab_libp2p.py [--nat cone|symmetric]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.host.autonat import AutoNATService
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service
from natlab import LANS, PUB_IP, WAN_IPS, NatLab, unavailable_reason

from p2pshare.identity import NodeKey
from p2pshare.net.host import build_host

ECHO = TProtocol("/natlab/echo/1")
SEEDS = {"relay": b"\x01" * 32, "a": b"\x02" * 32, "b": b"\x03" * 32}
PORT = 4001
BULK = 8 << 20


def _peer(name: str) -> ID:
    return ID.from_base58(NodeKey.from_seed(SEEDS[name]).peer_id)


def _say(**fields: Any) -> None:
    print(json.dumps(fields, default=str), flush=True)


def _conn_kind(host: Any, peer: ID) -> str:
    conns = host.get_network().connections.get(peer)
    if not conns:
        return "none"
    kinds = []
    for conn in conns if isinstance(conns, list) else [conns]:
        addrs = [str(a) for a in conn.get_transport_addresses()]
        kinds.append("relayed" if any("/p2p-circuit" in a for a in addrs) else f"direct {addrs}")
    return ", ".join(kinds)


async def _echo(stream: Any) -> None:
    total = 0
    with contextlib.suppress(StreamEOF):  # py-libp2p raises at EOF instead of returning b""
        while data := await stream.read(1 << 16):
            total += len(data)
    await stream.write(str(total).encode())
    await stream.close()


async def _bulk(host: Any, peer: ID, size: int) -> str:
    """Send ``size`` bytes on a new stream; the answer is the byte count the far end saw."""
    start = time.perf_counter()
    try:
        with trio.fail_after(120):
            stream = await host.new_stream(peer, [ECHO])
            block = b"x" * min(size, 1 << 16)
            for _ in range(size // len(block)):
                await stream.write(block)
            await stream.close()
            seen = await stream.read(100)
    except Exception as exc:  # noqa: BLE001 - the probe reports every failure as a fact
        return f"failed: {type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - start
    return f"{seen.decode()} bytes in {elapsed:.2f} s ({size / elapsed / 1e6:.1f} MB/s)"


async def relay() -> None:
    host = build_host(NodeKey.from_seed(SEEDS["relay"]))
    limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=8, max_reservations=8)
    protocol = CircuitV2Protocol(host, limits=limits, allow_hop=True)
    async with host.run([multiaddr.Multiaddr(f"/ip4/0.0.0.0/tcp/{PORT}")]):
        AutoNATService(host)  # type: ignore[arg-type]
        async with background_trio_service(protocol):
            _say(role="relay", ready=True)
            await trio.sleep(80)


async def _client(
    name: str, nursery: trio.Nursery
) -> tuple[Any, CircuitV2Transport, DCUtRProtocol, AutoNATService]:
    host = build_host(NodeKey.from_seed(SEEDS[name]))
    await nursery.start(_run_host, host)
    protocol = CircuitV2Protocol(host, allow_hop=False)
    await nursery.start(_service, protocol)
    transport = CircuitV2Transport(
        host, protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT)
    )
    dcutr = DCUtRProtocol(host)
    await nursery.start(_service, dcutr)
    autonat = AutoNATService(host)  # type: ignore[arg-type]
    host.set_stream_handler(ECHO, _echo)
    relay_addr = multiaddr.Multiaddr(f"/ip4/{PUB_IP}/tcp/{PORT}")
    await host.connect(PeerInfo(_peer("relay"), [relay_addr]))
    _say(role=name, step="connected to relay", addrs=[str(a) for a in host.get_addrs()])
    try:
        with trio.fail_after(20):
            status = await autonat.check_reachability([_peer("relay")])
        _say(
            role=name,
            step="autonat",
            status=status,
            results={str(k): v for k, v in autonat.dial_results.items()},
        )
    except Exception as exc:  # noqa: BLE001
        _say(role=name, step="autonat", error=f"{type(exc).__name__}: {exc}")
    # The router's public address and our listen port: unreachable (nothing forwards it),
    # so an honest AutoNAT server must answer E_DIAL_ERROR.
    router = "router1" if name == "a" else "router2"
    unreachable = multiaddr.Multiaddr(f"/ip4/{WAN_IPS[router]}/tcp/{PORT}")
    try:
        with trio.fail_after(20):
            verdict = await autonat.query_server(_peer("relay"), [unreachable.to_bytes()])
        _say(role=name, step="autonat dial-back of an unreachable address", verdict=verdict)
    except Exception as exc:  # noqa: BLE001
        _say(role=name, step="autonat dial-back", error=f"{type(exc).__name__}: {exc}")
    return host, transport, dcutr, autonat


async def _run_host(host: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with host.run([multiaddr.Multiaddr(f"/ip4/0.0.0.0/tcp/{PORT}")]):
        task_status.started()
        await trio.sleep_forever()


async def _service(service: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with background_trio_service(service):
        task_status.started()
        await trio.sleep_forever()


async def node_a() -> None:
    async with trio.open_nursery() as nursery:
        host, transport, _, _ = await _client("a", nursery)
        try:
            with trio.fail_after(20):
                stream = await host.new_stream(_peer("relay"), [HOP_PROTOCOL])
                ok = await transport.reserve(stream, _peer("relay"), nursery)
            _say(role="a", step="reserve", ok=ok, addrs=[str(a) for a in host.get_addrs()])
        except Exception as exc:  # noqa: BLE001
            _say(role="a", step="reserve", error=f"{type(exc).__name__}: {exc}")
        await trio.sleep(60)
        _say(role="a", step="end", conn_to_b=_conn_kind(host, _peer("b")))
        nursery.cancel_scope.cancel()


async def node_b() -> None:
    async with trio.open_nursery() as nursery:
        host, transport, dcutr, _ = await _client("b", nursery)
        await trio.sleep(3)  # A's reservation (the parent starts B after A said so)
        circuit = multiaddr.Multiaddr(
            f"/ip4/{PUB_IP}/tcp/{PORT}/p2p/{_peer('relay')}/p2p-circuit/p2p/{_peer('a')}"
        )
        try:
            with trio.fail_after(20):
                await transport.dial(circuit)
            _say(role="b", step="dial via relay", conn=_conn_kind(host, _peer("a")))
        except Exception as exc:  # noqa: BLE001
            _say(role="b", step="dial via relay", error=f"{type(exc).__name__}: {exc}")
        for size in (1000, 1 << 18, BULK):
            _say(role="b", step=f"{size} B over relay", result=await _bulk(host, _peer("a"), size))
        try:
            with trio.fail_after(30):
                punched = await dcutr.initiate_hole_punch(_peer("a"))
            _say(role="b", step="dcutr", ok=punched, conn=_conn_kind(host, _peer("a")))
        except Exception as exc:  # noqa: BLE001
            _say(role="b", step="dcutr", error=f"{type(exc).__name__}: {exc}")
        for size in (1000, BULK):
            result = await _bulk(host, _peer("a"), size)
            _say(
                role="b",
                step=f"{size} B after dcutr",
                result=result,
                conn=_conn_kind(host, _peer("a")),
            )
        nursery.cancel_scope.cancel()


def orchestrate(nat: str) -> None:
    script = [sys.executable, __file__]
    with NatLab(nat) as lab:
        procs = []
        try:
            for role, ns, wait_for in (
                ("relay", "pub", '"ready"'),
                ("a", LANS["router1"][0], '"reserve"'),
                ("b", LANS["router2"][0], None),
            ):
                proc = subprocess.Popen(
                    [*lab.wrapper(ns), *script, "--role", role],
                    stdout=subprocess.PIPE,
                    stderr=open(f"/tmp/natlab-{role}.err", "w"),  # noqa: SIM115, PTH123
                    text=True,
                )
                procs.append(proc)
                assert proc.stdout is not None
                deadline = time.monotonic() + 60
                while wait_for and time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    print(line, end="", flush=True)
                    if wait_for in line:
                        break
            assert procs[2].stdout is not None
            for line in procs[2].stdout:
                print(line, end="", flush=True)
            procs[2].wait(120)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nat", choices=("cone", "symmetric"), default="cone")
    parser.add_argument("--role", choices=("relay", "a", "b"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        if os.environ.get("NATLAB_DEBUG"):
            logging.basicConfig(format="%(relativeCreated)d %(name)s %(message)s")
            root = logging.getLogger("libp2p")
            root.handlers.clear()
            root.propagate = True
            root.setLevel(logging.DEBUG)
        trio.run({"relay": relay, "a": node_a, "b": node_b}[args.role])
        return
    reason = unavailable_reason()
    if reason:
        print(f"natlab_libp2p: skipped: {reason}")
        return
    orchestrate(args.nat)


if __name__ == "__main__":
    main()
