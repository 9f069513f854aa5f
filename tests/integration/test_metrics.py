"""Live numbers of real daemons: rates in status and peers, top, the Prometheus endpoint."""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli
from tests.integration.cluster import cli_json

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration
SIZE = 3 * (1 << 20) + 77


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enable_metrics(home: Home, port: int) -> None:
    text = home.config_path.read_text()
    head, sep, tail = text.partition("[metrics]")
    tail = re.sub(r'(?m)^listen = ""$', f'listen = "127.0.0.1:{port}"', tail, count=1)
    home.config_path.write_text(head + sep + tail)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        name: float(value)
        for name, value in re.findall(r"(?m)^(p2pshare_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text)
    }


def test_a_transfer_shows_in_status_peers_top_and_prometheus(short_tmp: Path) -> None:
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    port = free_port()
    init_home(seeder_home)
    enable_metrics(seeder_home, port)
    with ExitStack() as stack:
        seeder = stack.enter_context(DaemonProcess(seeder_home))
        seeder.start()
        init_home(getter_home, bootstrap=(seeder.info["addrs"][0],))
        getter = stack.enter_context(DaemonProcess(getter_home))
        getter.start()
        data = short_tmp / "data.bin"
        data.write_bytes(os.urandom(SIZE))
        ticket = cli_json(seeder_home, "share", str(data))["ticket"]
        cli_json(getter_home, "get", ticket, "-o", str(short_tmp / "out.bin"))
        seeder_id, getter_id = seeder.info["peer_id"], getter.info["peer_id"]

        from_seeder = {p["peer_id"]: p for p in cli_json(getter_home, "peers")["peers"]}
        assert from_seeder[seeder_id]["bytes_received"] >= SIZE
        to_getter = {p["peer_id"]: p for p in cli_json(seeder_home, "peers")["peers"]}
        assert to_getter[getter_id]["bytes_sent"] >= SIZE
        assert to_getter[getter_id]["up_bps"] >= 0

        status = cli_json(seeder_home, "status")
        assert status["traffic"]["bytes_sent"] >= SIZE
        assert status["connections"] >= 1
        assert status["provide_queue"] >= 0

        human = run_cli(seeder_home, "status")
        assert human.returncode == 0, human.stderr
        assert re.search(r"(?m)^traffic: +up .*/s, down .*/s \(3\.0 MiB sent", human.stdout)
        assert re.search(r"(?m)^peers: +1 \(\d+ connections\)$", human.stdout)
        listed = run_cli(seeder_home, "peers")
        assert listed.returncode == 0, listed.stderr
        assert re.search(rf"(?m)^{getter_id} .* up .*/s  down .*/s", listed.stdout)

        top = run_cli(getter_home, "top", "--count", "1")
        assert top.returncode == 0, top.stderr
        assert "4 verified, 0 rejected" in top.stdout

        scraped = scrape(port)
        assert scraped["p2pshare_bytes_sent_total"] >= SIZE
        assert scraped["p2pshare_peers"] >= 1
        assert scraped["p2pshare_chunks_rejected_total"] == 0
        seeder.stop()
        with pytest.raises(urllib.error.URLError):
            scrape(port)


def test_a_metrics_port_in_use_stops_the_daemon_with_one_sentence(short_tmp: Path) -> None:
    home = Home(short_tmp / "m")
    init_home(home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        enable_metrics(home, taken.getsockname()[1])
        result = run_cli(home, "daemon", timeout=60)
    assert result.returncode == 4, result.stderr
    assert "(from [metrics] listen in" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_found_before_the_node_joins_the_network(
    short_tmp: Path,
) -> None:
    boot_home, home = Home(short_tmp / "b"), Home(short_tmp / "m")
    init_home(boot_home)
    with DaemonProcess(boot_home) as boot, socket.socket() as taken:
        boot.start()
        init_home(home, bootstrap=(boot.info["addrs"][0],))
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        enable_metrics(home, port)
        result = run_cli(home, "daemon", timeout=60)
        assert result.returncode == 4, result.stderr
        assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (from [metrics]")
        assert len(result.stderr.strip().splitlines()) == 1
        log = home.log_path.read_text() if home.log_path.exists() else ""
        assert "joined the network" not in log
        assert cli_json(boot_home, "peers")["peers"] == []


def test_a_metrics_port_that_is_the_nodes_own_listen_port_says_so(short_tmp: Path) -> None:
    home = Home(short_tmp / "m")
    port = free_port()
    init_home(home, (f"/ip4/0.0.0.0/tcp/{port}",))
    enable_metrics(home, port)
    result = run_cli(home, "daemon", timeout=60)
    assert result.returncode == 4, result.stderr
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port} (from [metrics] listen in "
        f"{home.config_path}): the port is this node's own listen port ([network] listen "
        f"/ip4/0.0.0.0/tcp/{port}); choose another port\n"
    )
