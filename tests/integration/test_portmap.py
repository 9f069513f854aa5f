"""Port mapping with real daemons: a fake NAT-PMP router on 127.0.0.x, named by
``[network] natpmp_gateway`` (tests/net/test_portmap.py tests the pieces)."""

from __future__ import annotations

import random
import socket
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.launcher import DaemonProcess, init_home, run_cli
from p2pshare.proto.natpmp import PORT
from tests.integration.cluster import cli_json
from tests.net.fake_gateway import EXTERNAL_IP, FakeGateway

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.home import Home

pytestmark = pytest.mark.integration
MAPPED_WITHIN_S = 20.0


@contextmanager
def router() -> Iterator[tuple[str, FakeGateway]]:
    """A FakeGateway on the NAT-PMP port of a free 127.0.0.x, served by a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):
        ip = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            sock.bind((ip, PORT))
            break
        except OSError:
            continue
    else:
        pytest.fail("no free 127.0.0.x for a fake NAT-PMP router")
    sock.settimeout(0.1)
    gateway = FakeGateway(shift=True)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(64)
            except TimeoutError:
                continue
            answer = gateway.answer(data)
            if answer is not None:
                sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ip, gateway
    finally:
        done.set()
        thread.join(5)
        sock.close()


def test_a_daemon_maps_both_ports_announces_the_mapping_and_removes_it_on_stop(
    home: Home,
) -> None:
    with router() as (gateway_ip, gateway):
        # Every interface, as a node on a home network listens: a router forwards to its
        # LAN address, never to loopback (below).
        init_home(
            home, listen=("/ip4/0.0.0.0/tcp/0",), port_mapping="natpmp", natpmp_gateway=gateway_ip
        )
        with DaemonProcess(home) as daemon:
            ready = daemon.start()
            peer_id = ready["peer_id"]
            deadline = time.monotonic() + MAPPED_WITHIN_S
            while (status := cli_json(home, "status"))["port_mapping"]["state"] != "mapped":
                assert time.monotonic() < deadline, status["port_mapping"]
                time.sleep(0.2)
            mapping = status["port_mapping"]
            assert (mapping["via"], mapping["external_ip"]) == ("natpmp", EXTERNAL_IP)
            ports = {name: p["internal"] for name, p in mapping["ports"].items()}
            assert set(ports) == {"libp2p", "data"}
            assert gateway.mappings == {
                port: port + 1 if port < 0xFFFF else port - 1 for port in ports.values()
            }
            mapped = f"/ip4/{EXTERNAL_IP}/tcp/{gateway.mappings[ports['libp2p']]}"
            assert f"{mapped}/p2p/{peer_id}" in cli_json(home, "id")["addrs"]
            assert mapping["addrs"] == {mapped: "candidate"}
            # Mapped or not by then, the router's address is never where it listens.
            assert not any(EXTERNAL_IP in a for a in ready["listening"])
            assert set(ready["mapped"]) <= {f"{mapped}/p2p/{peer_id}"}
            assert mapping["line"].startswith(f"natpmp mapped {EXTERNAL_IP} (libp2p ")
            daemon.stop()
    assert gateway.mappings == {}
    assert sorted(r.internal_port for r in gateway.removals()) == sorted(ports.values())


def test_off_by_default_the_router_never_hears_from_the_daemon(home: Home) -> None:
    with router() as (gateway_ip, gateway):
        # A gateway named, but port_mapping left at its default.
        init_home(home, natpmp_gateway=gateway_ip)
        with DaemonProcess(home) as daemon:
            daemon.start()
            status = cli_json(home, "status")["port_mapping"]
            daemon.stop()
    assert (status["state"], status["line"]) == ("off", "off")
    assert gateway.datagrams == 0


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_mapped(home: Home) -> dict[str, Any]:
    deadline = time.monotonic() + MAPPED_WITHIN_S
    while (status := cli_json(home, "status"))["port_mapping"]["state"] != "mapped":
        assert time.monotonic() < deadline, status["port_mapping"]
        time.sleep(0.2)
    return dict(status["port_mapping"])


def test_a_daemon_on_loopback_only_never_asks_the_router_and_status_says_why(
    home: Home,
) -> None:
    """No router forwards to 127.0.0.1: a mapping would announce an address that
    reaches nothing (field test: a loopback daemon mapped its port)."""
    with router() as (gateway_ip, gateway):
        init_home(home, port_mapping="natpmp", natpmp_gateway=gateway_ip)
        with DaemonProcess(home) as daemon:
            daemon.start()
            status = cli_json(home, "status")["port_mapping"]
            said = run_cli(home, "status")
            daemon.stop()
        log = home.log_path.read_text()
    reason = (
        "this node listens only on loopback (127.0.0.1), which no router can forward to; "
        "to map a port, listen on a LAN address or 0.0.0.0 ([network] listen)"
    )
    assert (status["state"], status["reason"]) == ("not_asked", reason)
    assert f"port mapping: natpmp not asked: {reason}" in " ".join(said.stdout.split())
    assert "the router is not asked" in log
    assert gateway.datagrams == 0


def test_a_loopback_listen_address_beside_a_routable_one_is_not_mapped(home: Home) -> None:
    """The first listen address is on loopback, so is the data channel: only the
    libp2p port of the wildcard address is mapped."""
    loopback, wildcard = free_port("127.0.0.1"), free_port("0.0.0.0")
    with router() as (gateway_ip, gateway):
        init_home(
            home,
            listen=(f"/ip4/127.0.0.1/tcp/{loopback}", f"/ip4/0.0.0.0/tcp/{wildcard}"),
            port_mapping="natpmp",
            natpmp_gateway=gateway_ip,
        )
        with DaemonProcess(home) as daemon:
            daemon.start()
            mapping = wait_mapped(home)
            daemon.stop()
    assert {name: p["internal"] for name, p in mapping["ports"].items()} == {"libp2p": wildcard}
    assert len(gateway.removals()) == 1
