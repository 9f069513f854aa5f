"""True addresses and `connect ADDR` between real daemons (field test #6, #7, #19)."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, start_all
from p2pshare.net.addrs import interface_ips
from p2pshare.proto.ticket import parse_ticket
from p2pshare.store.catalog import Catalog, DownloadRequest
from p2pshare.store.lifecycle import DownloadState

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
CONNECT_AT_ONCE_S = 5.0
FIRST_RETRY_S = 10.0


def cli_json(home: Home, *args: str) -> Any:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def remembered(home: Home, peer_id: str) -> tuple[str, ...]:
    """The addresses ``home``'s catalog remembers for ``peer_id`` (daemon stopped)."""
    catalog = Catalog(home.catalog_path)
    try:
        rows = {p.peer_id: p.addrs for p in catalog.known_peers()}
    finally:
        catalog.close()
    return rows.get(peer_id, ())


@pytest.fixture
def trio_of_daemons(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    homes = [Home(short_tmp / name) for name in "abc"]
    with ExitStack() as stack:
        daemons = []
        for home in homes:
            init_home(home)
            daemons.append(stack.enter_context(DaemonProcess(home)))
        start_all(daemons)
        yield daemons


def test_id_ready_line_and_tickets_announce_the_same_addresses_never_the_wildcard(
    home: Home, tmp_path: Path
) -> None:
    init_home(home, listen=["/ip4/0.0.0.0/tcp/0"])
    with DaemonProcess(home) as daemon:
        ready = daemon.start()["addrs"]
        shown = cli_json(home, "id")["addrs"]
        data = tmp_path / "f.txt"
        data.write_text("x")
        ticket = parse_ticket(cli_json(home, "share", str(data))["ticket"])
        # No peer has told this node how it sees it (loopback observations are dropped).
        assert cli_json(home, "status")["observed_addrs"] == []
    assert ready == shown
    assert ready
    assert not any("/ip4/0.0.0.0/" in a for a in ready)
    assert sorted(ticket.addrs) == sorted(a.split("/p2p/")[0] for a in ready)
    routable = [ip for ip in interface_ips() if not ipaddress.ip_address(ip).is_loopback]
    if routable:
        assert not any(a.startswith("/ip4/127.") for a in ready), "loopback told to everyone"


def test_connect_reaches_a_restarted_peer_at_its_new_address_at_once(
    trio_of_daemons: list[DaemonProcess],
) -> None:
    a, b, c = trio_of_daemons
    for other in (b, c):
        cli_json(other.home, "connect", a.info["addrs"][0])
    old = a.info["addrs"][0]
    a.stop()
    # c restarts too: its join dials a's old address, fails, and py-libp2p then refuses
    # to dial a for 60 s (field test #7).
    c.stop()
    with DaemonProcess(c.home) as c_again, DaemonProcess(a.home) as a_again:
        c_again.start()
        new = a_again.start()["addrs"][0]
        assert new != old
        t0 = time.monotonic()
        result = cli_json(c.home, "connect", new)
        assert result["peer_id"] == a.info["peer_id"]
        assert time.monotonic() - t0 < CONNECT_AT_ONCE_S
        assert a.info["peer_id"] in {p["peer_id"] for p in cli_json(c.home, "peers")["peers"]}
        c_again.stop()
    assert remembered(c.home, a.info["peer_id"])[0] == new.split("/p2p/")[0]


def test_connect_at_a_wrong_address_to_a_connected_peer_says_so_and_is_not_remembered(
    trio_of_daemons: list[DaemonProcess],
) -> None:
    a, b, _ = trio_of_daemons
    peer = a.info["peer_id"]
    good = a.info["addrs"][0]
    cli_json(b.home, "connect", good)
    wrong = f"/ip4/127.0.0.1/tcp/{closed_port()}"
    failed = run_cli(b.home, "connect", f"{wrong}/p2p/{peer}")
    assert failed.returncode == 1
    assert failed.stderr == (
        f"error: could not connect to {peer} at {wrong}: connection refused;"
        " the existing connection to it is still up\n"
    )
    # Refused by the CLI before the daemon is asked: a usage error (docs/cli.md).
    quic = run_cli(b.home, "connect", f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{peer}")
    assert quic.returncode == ExitCode.USAGE
    assert "dials TCP only" in quic.stderr
    assert quic.stderr.count("\n") == 1
    assert peer in {p["peer_id"] for p in cli_json(b.home, "peers")["peers"]}
    b.stop()
    assert wrong not in remembered(b.home, peer)
    assert remembered(b.home, peer)[0] == good.split("/p2p/")[0]


def wait_for_retry(home: Home, longer_than: float, limit: float = 60.0) -> dict[str, Any]:
    """The only unfinished download of ``home`` once it waits more than ``longer_than``
    seconds to retry."""
    deadline = time.monotonic() + limit
    while True:
        (download,) = cli_json(home, "downloads")["downloads"]
        if (download["retry_in_s"] or 0) > longer_than:
            return download  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, download
        time.sleep(0.2)


# About 45 s (two retry waits and four daemon starts): run with P2PSHARE_HEAVY=1.
# tests/node/test_downloads.py and tests/net/test_peers.py cover its parts quickly.
@pytest.mark.heavy
def test_a_resumed_download_retries_as_soon_as_its_provider_comes_back_on_a_new_port(
    short_tmp: Path, tmp_path: Path
) -> None:
    """Field test #27: the download waited its whole backoff (and then dialed the
    provider's old port) although the provider was back."""
    provider_home, getter_home = Home(short_tmp / "p"), Home(short_tmp / "g")
    init_home(provider_home)
    # The getter keeps its port, so the restarted provider finds it again.
    init_home(getter_home, listen=[f"/ip4/127.0.0.1/tcp/{closed_port()}"])
    data = tmp_path / "data.bin"
    data.write_bytes(b"moved provider " * 50_000)
    # The provider stops first, so it remembers the getter.
    with DaemonProcess(getter_home) as getter, DaemonProcess(provider_home) as provider:
        start_all([provider, getter])
        cli_json(getter_home, "connect", provider.info["addrs"][0])
        shared = cli_json(provider_home, "share", str(data))
    ticket = parse_ticket(shared["ticket"])
    dest = tmp_path / "out.bin"
    # As a getter stopped mid-download leaves it: resumed at its next start.
    catalog = Catalog(getter_home.catalog_path)
    now = int(time.time())
    catalog.save_download_request(
        DownloadRequest(
            shared["cid"],
            str(dest),
            ((ticket.peer_id, ticket.addrs),),
            False,
            DownloadState.ACTIVE,
            None,
            now,
            now,
        )
    )
    catalog.close()
    with DaemonProcess(getter_home) as getter, DaemonProcess(provider_home) as provider:
        getter.start()
        # The second wait (20 s) leaves time to start the provider well before it ends.
        waiting = wait_for_retry(getter_home, longer_than=FIRST_RETRY_S * 1.5)
        scheduled = time.monotonic() + waiting["retry_in_s"]
        provider.start()
        assert provider.info["addrs"] != [f"{a}/p2p/{ticket.peer_id}" for a in ticket.addrs]
        while cli_json(getter_home, "downloads")["downloads"]:
            assert time.monotonic() < scheduled - 1, "waited for the scheduled retry"
            time.sleep(0.2)
    assert dest.read_bytes() == data.read_bytes()


def test_connect_refuses_unspecified_and_own_addresses_and_resolves_names(
    trio_of_daemons: list[DaemonProcess],
) -> None:
    a, b, _ = trio_of_daemons
    peer = a.info["peer_id"]
    port = a.info["addrs"][0].split("/")[4]
    unspecified = run_cli(b.home, "connect", f"/ip4/0.0.0.0/tcp/{port}/p2p/{peer}")
    assert unspecified.returncode == ExitCode.USAGE
    assert unspecified.stderr == (
        f"error: '/ip4/0.0.0.0/tcp/{port}/p2p/{peer}' has the unspecified address 0.0.0.0, "
        "which names no node; use an address that `p2pshare id` prints on that node\n"
    )
    # Refused by the daemon too, whoever asks it (the control API is not only the CLI).
    with pytest.raises(Exception, match="is the unspecified address"):
        b.call("connect", {"addr": f"/ip6/::/tcp/{port}/p2p/{peer}"})
    to_self = run_cli(b.home, "connect", b.info["addrs"][0])
    assert to_self.returncode == 1
    assert to_self.stderr == (
        f"error: {b.info['peer_id']} is this node's own peer ID; connect to another node "
        "(`p2pshare id` on it prints its addresses)\n"
    )
    own = b.info["addrs"][0].split("/p2p/")[0]
    own_addr = run_cli(b.home, "connect", f"{own}/p2p/{peer}")
    assert own_addr.returncode == 1
    assert own_addr.stderr == f"error: {own} is this node's own address\n"
    assert cli_json(b.home, "peers")["peers"] == []
    named = f"/dns4/localhost/tcp/{port}"
    assert cli_json(b.home, "connect", f"{named}/p2p/{peer}")["peer_id"] == peer
    b.stop()
    assert remembered(b.home, peer)[0] == named


def test_connect_through_a_relay_and_status_says_which_relays_refused(short_tmp: Path) -> None:
    relay_home, plain_home, hidden_home, dialer_home = (
        Home(short_tmp / name) for name in ("relay", "plain", "hidden", "dialer")
    )
    init_home(relay_home, relay_service=True)
    init_home(plain_home)
    with ExitStack() as stack:
        relay, plain = (stack.enter_context(DaemonProcess(h)) for h in (relay_home, plain_home))
        start_all([relay, plain])
        relays = (relay.info["addrs"][0], plain.info["addrs"][0])
        init_home(hidden_home, relays=relays)
        init_home(dialer_home)
        hidden, dialer = (stack.enter_context(DaemonProcess(h)) for h in (hidden_home, dialer_home))
        start_all([hidden, dialer])
        states = cli_json(hidden_home, "status")["relays"]
        assert [(s["relay"], s["state"]) for s in states] == [
            (relays[0], "reserved"),
            (relays[1], "refused"),
        ]
        assert "relay service" in states[1]["reason"]
        human = run_cli(hidden_home, "status").stdout
        assert f"{relays[1]} refused (it does not run the relay service" in human
        target = hidden.info["peer_id"]
        circuit = f"{relays[0]}/p2p-circuit"
        assert cli_json(dialer_home, "connect", f"{circuit}/p2p/{target}")["peer_id"] == target
        assert target in {p["peer_id"] for p in cli_json(dialer_home, "peers")["peers"]}
        dialer.stop()
        assert remembered(dialer_home, target)[0] == circuit
        hidden.stop()
    log = hidden_home.log_path.read_text()
    assert log.count(f"relay {plain.info['peer_id']} refused a reservation") == 1
