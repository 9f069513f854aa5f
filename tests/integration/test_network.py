"""Six real daemons on 127.0.0.1 joining through one bootstrap node."""

from __future__ import annotations

import json
import re
import socket
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, start_all, wait_announced

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
FIND_BOUND_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_json(home: Home, *args: str) -> Any:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def network(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    """node0 is the bootstrap node; node1..node4 know only node0."""
    port = free_port()
    homes = [Home(short_tmp / f"n{i}") for i in range(5)]
    init_home(homes[0], listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    boot = DaemonProcess(homes[0])
    with ExitStack() as stack:
        stack.enter_context(boot)
        boot.start()
        boot_addr = boot.info["addrs"][0]
        others = []
        for home in homes[1:]:
            init_home(home, bootstrap=(boot_addr,))
            others.append(stack.enter_context(DaemonProcess(home)))
        start_all(others)
        daemons = [boot, *others]
        yield daemons
        for extra in daemons[len(homes) :]:
            extra.__exit__(None, None, None)


def peer_ids(home: Home) -> set[str]:
    return {p["peer_id"] for p in cli_json(home, "peers")["peers"]}


def test_find_through_the_dht_and_reprovide_after_restart(
    network: list[DaemonProcess], tmp_path: Path, short_tmp: Path
) -> None:
    boot, sharer, *_ = network
    data = tmp_path / "notes.txt"
    data.write_bytes(b"found through the DHT\n" * 1000)
    shared = cli_json(sharer.home, "share", str(data))
    cid = shared["cid"]
    # `share` returned once the peers the sharer knows held the record.
    assert shared["announced_to"] >= 1
    sharer_id = sharer.info["peer_id"]
    # A sixth node joins after the share was announced, knowing only the bootstrap node.
    finder_home = Home(short_tmp / "n5")
    init_home(finder_home, bootstrap=(boot.info["addrs"][0],))
    finder = DaemonProcess(finder_home)
    network.append(finder)
    finder.start()
    # Its join lookup may connect it to more peers than the bootstrap node; the provider
    # is still learnt from the DHT's records, which `find` asks for.
    assert boot.info["peer_id"] in peer_ids(finder.home)

    t0 = time.monotonic()
    found = cli_json(finder.home, "find", cid, "--timeout", str(FIND_BOUND_S))
    elapsed = time.monotonic() - t0
    assert [p["peer_id"] for p in found["providers"]] == [sharer_id]
    assert found["providers"][0]["addrs"] == [sharer.info["addrs"][0].split("/p2p/")[0]]
    assert elapsed < FIND_BOUND_S

    status = cli_json(sharer.home, "status")
    (entry,) = status["shares"]
    assert entry["cid"] == cid
    assert entry["provided_to"] >= 1
    first_provided = entry["provided_at"]

    sharer.stop()
    restarted_at = int(time.time())
    restarted = DaemonProcess(sharer.home)
    with restarted:
        restarted.start()
        # The daemon announces its shares in the background once it has joined.
        wait_announced(sharer.home, cid, since=restarted_at)
        status = cli_json(sharer.home, "status")
        (entry,) = status["shares"]
        assert entry["provided_at"] >= restarted_at >= first_provided
        assert entry["provided_to"] >= 1
        assert boot.info["peer_id"] in peer_ids(sharer.home), "rejoined without help"
        again = cli_json(finder.home, "find", cid, "--timeout", str(FIND_BOUND_S))
        assert [p["peer_id"] for p in again["providers"]] == [sharer_id]


def test_no_providers_is_one_sentence(network: list[DaemonProcess]) -> None:
    missing = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"
    result = run_cli(network[2].home, "find", missing, "--timeout", "2")
    assert result.returncode == 1
    # The lookup ends once every peer has answered, well before the timeout: it says so.
    assert re.fullmatch(
        f"error: no providers found for {missing}: the lookup asked [1-5] peers? and none"
        " knows a provider; check the content ID for a typo [^\n]*\n",
        result.stderr,
    ), result.stderr
    assert cli_json(network[2].home, "find", missing, "--timeout", "2")["providers"] == []


def test_connected_peers_persist_across_restart(
    network: list[DaemonProcess], short_tmp: Path
) -> None:
    loner_home = Home(short_tmp / "loner")
    init_home(loner_home)
    target = network[3]
    with DaemonProcess(loner_home) as loner:
        loner.start()
        assert cli_json(loner_home, "peers")["peers"] == []
        connected = cli_json(loner_home, "connect", target.info["addrs"][0])
        assert connected["peer_id"] == target.info["peer_id"]
        (peer,) = cli_json(loner_home, "peers")["peers"]
        assert peer["latency_ms"] is not None
        assert peer["latency_ms"] < 1000
        assert peer["path"] == "direct"
    with DaemonProcess(loner_home) as again:
        again.start()
        assert target.info["peer_id"] in peer_ids(loner_home)


def test_connect_errors_are_sentences(network: list[DaemonProcess]) -> None:
    home = network[1].home
    bad = run_cli(home, "connect", "not-an-address")
    assert bad.returncode == ExitCode.USAGE
    assert bad.stderr.startswith("error: 'not-an-address' is not a peer address")
    port = free_port()
    peer_id = network[2].info["peer_id"]
    unreachable = run_cli(home, "connect", f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"error: could not connect to {peer_id}")
