"""mDNS discovery between two daemons in network namespaces made for this test.

Needs root and `ip netns` (iproute2), and is skipped without them; CI runs as root with
iproute2 (scripts/setup.sh installs it), so there it runs. Addresses
live only on the veth pair between the two namespaces, which have no default
route: only the link's multicast can bring the daemons together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import multiaddr
import pytest
from libp2p.peer.id import ID

from p2pshare.home import Home
from p2pshare.identity import NodeKey
from p2pshare.launcher import DaemonProcess, init_home, run_cli
from p2pshare.net.mdns import advertisable, decode_txt, encode_txt

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration
DISCOVERY_BOUND_S = 30.0
STOP_BOUND_S = 5.0


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (`ip netns`) to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    a, b = f"p2psa{tag}", f"p2psb{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh(
            "ip",
            "link",
            "add",
            f"va{tag}",
            "netns",
            a,
            "type",
            "veth",
            "peer",
            f"vb{tag}",
            "netns",
            b,
        )
        for ns, dev, ip in ((a, f"va{tag}", "10.231.7.1/24"), (b, f"vb{tag}", "10.231.7.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up", "multicast", "on")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", b], check=False, capture_output=True)


def _tail(path: os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(errors="replace")[-3000:]
    except OSError:
        return "(unreadable)"


def _peer_ids(daemon: DaemonProcess) -> list[str]:
    result = run_cli(daemon.home, "peers", "--json")
    assert result.returncode == 0, result.stderr
    return [p["peer_id"] for p in json.loads(result.stdout)["peers"]]


def test_two_daemons_find_each_other_by_mdns(namespaces: tuple[str, str], short_tmp: Path) -> None:
    daemons = []
    for index, ns in enumerate(namespaces):
        home = Home(short_tmp / f"m{index}")
        init_home(home, listen=("/ip4/0.0.0.0/tcp/4001",), mdns=True)
        daemons.append(DaemonProcess(home, log_level="debug", wrapper=("ip", "netns", "exec", ns)))
    with daemons[0], daemons[1]:
        daemons[0].start()
        daemons[1].start()
        started = time.monotonic()
        other = daemons[1].info["peer_id"]
        deadline = started + DISCOVERY_BOUND_S
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = _peer_ids(daemons[0])
            if other in seen:
                break
            time.sleep(0.2)
        logs = "\n".join(f"--- daemon {i}:\n{_tail(d.stderr_path)}" for i, d in enumerate(daemons))
        assert other in seen, f"no mDNS discovery within {DISCOVERY_BOUND_S:g} s\n{logs}"
        print(f"daemon A listed daemon B {time.monotonic() - started:.2f} s after B was ready")
        # The connection is one, seen from both ends.
        assert daemons[0].info["peer_id"] in _peer_ids(daemons[1]), logs
        for daemon in reversed(daemons):
            begun = time.monotonic()
            assert daemon.stop(timeout=STOP_BOUND_S * 2) == 0, _tail(daemon.stderr_path)
            assert time.monotonic() - begun < STOP_BOUND_S, _tail(daemon.stderr_path)


# -- what goes on the wire (no namespaces needed)


def test_announced_addresses_are_dialable() -> None:
    addrs = [
        multiaddr.Multiaddr(a)
        for a in (
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.231.7.1/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/ip6/::/tcp/4001",
            "/ip4/10.231.7.1/udp/4001/quic-v1",
        )
    ]
    assert [str(a) for a in advertisable(addrs)] == ["/ip4/10.231.7.1/tcp/4001"]
    loopback_only = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    assert advertisable(loopback_only) == loopback_only


def test_txt_record_round_trip_and_hostile_input() -> None:
    me = ID.from_base58(NodeKey.generate().peer_id)
    other = ID.from_base58(NodeKey.generate().peer_id)
    addrs = [multiaddr.Multiaddr(a) for a in ("/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/2")]
    rdata = encode_txt(me, addrs)
    # One length-prefixed "dnsaddr=" string per address, as the spec and go-libp2p expect.
    assert rdata.count(b"dnsaddr=") == 2
    assert rdata[0] == len(f"dnsaddr=/ip4/10.0.0.1/tcp/1/p2p/{me}")
    found = decode_txt(rdata)
    assert found is not None
    assert found.peer_id == me
    assert found.addrs == addrs

    def txt(*strings: str) -> bytes:
        return b"".join(bytes([len(s.encode())]) + s.encode() for s in strings)

    mixed = txt(
        f"dnsaddr=/ip4/0.0.0.0/tcp/4001/p2p/{me}",  # py-libp2p's: dials ourselves
        f"dnsaddr2=/ip4/127.0.0.1/tcp/4001/p2p/{me}",
        "dnsaddr=not a multiaddr",
        f"dnsaddr=/ip4/10.0.0.3/tcp/3/p2p/{other}",  # another peer: ignored
        f"dnsaddr=/ip4/10.0.0.4/tcp/4/p2p/{me}",
        "junk",
    )
    found = decode_txt(mixed + b"\xff")  # a truncated string at the end
    assert found is not None
    assert found.peer_id == me
    assert [str(a) for a in found.addrs] == ["/ip4/10.0.0.4/tcp/4", "/ip4/127.0.0.1/tcp/4001"]
    assert decode_txt(txt(f"dnsaddr=/ip4/0.0.0.0/tcp/4001/p2p/{me}")) is None
    assert decode_txt(b"") is None
