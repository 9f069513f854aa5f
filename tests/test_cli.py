"""CLI behaviour that needs no daemon."""

from __future__ import annotations

import importlib
import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pshare.control import client as _client
from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import run_cli
from p2pshare.node.lock import HomeLock


def test_init_creates_config_and_private_key(home: Home) -> None:
    result = run_cli(home, "init", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["peer_id"].startswith("12D3KooW")
    assert stat.S_IMODE(home.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700
    assert "[network]" in home.config_path.read_text()


def test_init_refuses_to_replace_a_key_without_force(home: Home) -> None:
    first = json.loads(run_cli(home, "init", "--json").stdout)["peer_id"]
    key = home.key_path.read_bytes()
    again = run_cli(home, "init")
    assert again.returncode == ExitCode.FAILED
    # The first way out starts the node it already is; a new identity is the second.
    # run_cli passes --home, which every hint keeps.
    named = Home(home.root, explicit=True)
    assert again.stderr == (
        f"error: {home.root} already holds node {first}, ready to use: start it with: "
        f"{named.command('daemon')}. To give it a new identity instead, "
        f"{named.command('init', '--force')} keeps the current key beside it\n"
    )
    assert home.key_path.read_bytes() == key


def test_init_force_keeps_the_key_it_replaces(home: Home) -> None:
    """Field: `init --force` overwrote node.key; the identity could not be put back."""
    run_cli(home, "init")
    first_key = home.key_path.read_bytes()
    forced = json.loads(run_cli(home, "init", "--force", "--json").stdout)
    kept = Path(forced["replaced_key"])
    assert kept.parent == home.root
    assert kept.name.startswith("node.key.replaced-")
    assert kept.read_bytes() == first_key
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert home.key_path.read_bytes() != first_key
    # A second replacement in the same second keeps both old keys.
    again = json.loads(run_cli(home, "init", "--force", "--json").stdout)
    assert again["replaced_key"] != forced["replaced_key"]
    assert kept.read_bytes() == first_key
    assert len(list(home.root.glob("node.key.replaced-*"))) == 2


def test_init_force_refuses_while_the_daemon_runs(home: Home) -> None:
    run_cli(home, "init")
    key = home.key_path.read_bytes()
    lock = HomeLock(home.lock_path)
    lock.acquire()
    try:
        refused = run_cli(home, "init", "--force")
    finally:
        lock.release()
    assert refused.returncode == ExitCode.FAILED
    stop = Home(home.root, explicit=True).command("stop")
    assert f"is already running for {home.root}; stop it with: {stop}" in refused.stderr
    assert home.key_path.read_bytes() == key
    assert list(home.root.glob("node.key.replaced-*")) == []


def test_init_writes_listen_addresses(home: Home) -> None:
    run_cli(home, "init", "--listen", "/ip4/127.0.0.1/tcp/0")
    assert 'listen = ["/ip4/127.0.0.1/tcp/0"]' in home.config_path.read_text()


def test_home_from_environment(home: Home) -> None:
    env = {"P2PSHARE_HOME": str(home.root), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "p2pshare_cli", "init", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["home"] == str(home.root)


PROBE = """
import sys
from p2pshare_cli.main import cli
try:
    cli([{args}], prog_name="p2pshare")
except SystemExit:
    pass
heavy = sorted(m for m in ("libp2p", "trio", "multiaddr") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def probe_imports(home: Home, args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)],
        capture_output=True,
        text=True,
        check=False,
        env={"P2PSHARE_HOME": str(home.root), "PATH": "/usr/bin:/bin"},
    )
    return result.stdout.strip().splitlines()[-1]


def test_help_and_queries_do_not_load_libp2p_or_trio(home: Home) -> None:
    assert probe_imports(home, "'--help'") == "HEAVY="
    assert probe_imports(home, "'id', '--json'") == "HEAVY="


def test_connect_checks_its_address_without_loading_multiaddr(home: Home) -> None:
    """Parsing a peer address with multiaddr loads ~50 modules of codecs; the CLI's own
    parser refuses a bad one, and passes a good one on, without it."""
    good = "'/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA'"
    assert probe_imports(home, f"'connect', {good}") == "HEAVY="
    assert probe_imports(home, "'connect', '/ip4/192.0.2.1/tcp/4001'") == "HEAVY="


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "-1"])
def test_compute_offer_refuses_non_finite_or_negative_max_load(value: str) -> None:
    cli = importlib.import_module("p2pshare_cli.main").cli
    result = CliRunner().invoke(cli, ["compute", "offer", "--max-load", value])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--max-load" in result.output
    assert "Traceback" not in result.output


def _summary(status: str | None, *, verified: bool, dissenters: list[str]) -> dict[str, object]:
    workers = [
        {"peer_id": "a", "status": status, "agrees": status != "timeout" and not dissenters},
        {"peer_id": "b", "status": status, "agrees": status != "timeout" and not dissenters},
    ]
    return {
        "job_id": "00" * 32,
        "replicas": 2,
        "verified": verified,
        "status": status,
        "exit_code": 0,
        "dissenters": dissenters,
        "workers": workers,
        "output": None,
        "input_bytes_moved": 0,
        "elapsed_s": 1.0,
    }


def test_a_timeout_summary_never_says_verified() -> None:
    compute = importlib.import_module("p2pshare_cli.compute")
    _describe, _exit_status = compute._describe, compute._exit_status
    result = _summary("timeout", verified=False, dissenters=[])
    text = _describe(result)
    assert "verified:" not in text.replace("NOT verified:", "")
    assert "timed out, and a timeout is never evidence" in text
    assert "disagree" not in text
    assert _exit_status(result) == ExitCode.JOB_FAILED


def test_exit_status_separates_failure_from_disagreement() -> None:
    _exit_status = importlib.import_module("p2pshare_cli.compute")._exit_status
    assert _exit_status(_summary("ok", verified=True, dissenters=[])) == ExitCode.OK
    assert _exit_status(_summary("trap", verified=True, dissenters=[])) == ExitCode.JOB_FAILED
    assert _exit_status(_summary("ok", verified=False, dissenters=["b"])) == ExitCode.DISAGREEMENT
    assert _exit_status(_summary(None, verified=False, dissenters=["a"])) == ExitCode.DISAGREEMENT


def test_status_says_how_peers_can_reach_the_node() -> None:
    # Installed as p2pshare_cli (pyproject's package-dir), which mypy knows as cli.
    _reachability = importlib.import_module("p2pshare_cli.status_text")._reachability

    relayed = "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit"
    assert _reachability({"reachability": "private", "relayed_at": [relayed]}) == (
        f"private; relayed at {relayed}"
    )
    assert (
        _reachability(
            {
                "reachability": "public",
                "confirmed_addrs": ["/ip4/203.0.113.9/tcp/4001"],
                "relay_service": True,
            }
        )
        == "public at /ip4/203.0.113.9/tcp/4001; relaying for others"
    )
    assert _reachability({}) == "unknown"


def test_status_says_which_relays_hold_a_slot_and_which_refused() -> None:
    _relays = importlib.import_module("p2pshare_cli.status_text")._relays

    assert _relays({}) == "none configured"
    relays = [
        {"relay": "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWA", "state": "reserved", "reason": None},
        {
            "relay": "/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWB",
            "state": "refused",
            "reason": "it does not run the relay service",
        },
    ]
    assert _relays({"relays": relays}) == (
        "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWA reserved; "
        "/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWB refused (it does not run the relay service)"
    )


def test_status_says_what_the_router_maps() -> None:
    _port_mapping = importlib.import_module("p2pshare_cli.status_text")._port_mapping

    assert _port_mapping({}) == "off"
    mapped = {
        "line": "natpmp mapped 203.0.113.7 (libp2p 4001->4001, data 4002->4002)",
        "addrs": {"/ip4/203.0.113.7/tcp/4001": "refuted"},
    }
    assert _port_mapping({"port_mapping": mapped}) == (
        "natpmp mapped 203.0.113.7 (libp2p 4001->4001, data 4002->4002); not reachable at "
        "/ip4/203.0.113.7/tcp/4001 (AutoNAT), not announced"
    )


def _status_doc(provided_to: int) -> dict[str, Any]:
    return {
        "peer_id": "12D3KooWself",
        "version": "0",
        "uptime_s": 5.0,
        "peers": 1,
        "connections": 1,
        "traffic": {"up_bps": 0.0, "down_bps": 0.0, "bytes_sent": 0, "bytes_received": 0},
        "routing_table": 1,
        "provide_queue": 0,
        "home": "/h",
        "compute": None,
        "shares": [
            {
                "cid": "bafyone",
                "provided_at": int(time.time()),
                "provided_to": provided_to,
                "stale": None,
            }
        ],
    }


@pytest.mark.parametrize(
    ("peers", "said"), [(1, "announced to 1 peer "), (2, "announced to 2 peers ")]
)
def test_status_counts_the_peers_a_share_was_announced_to_in_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, peers: int, said: str
) -> None:
    monkeypatch.setattr(_client, "call", lambda *_args, **_kw: _status_doc(peers))
    main = importlib.import_module("p2pshare_cli.main")
    result = CliRunner().invoke(main.cli, ["--home", str(tmp_path), "status"])
    assert result.exit_code == 0, result.output
    assert f"bafyone  {said}" in result.output


def test_share_says_on_how_many_peers_the_record_is_in_words(tmp_path: Path) -> None:
    announced = importlib.import_module("p2pshare_cli.main")._announced
    home = Home(tmp_path, explicit=True)
    assert announced(1, home) == "findable now, the record is on 1 peer"
    assert announced(3, home) == "findable now, the record is on 3 peers"
    assert announced(None, home) == (
        f"going on in the background (`p2pshare --home {tmp_path} status` shows when it is done)"
    )


def test_init_force_replaces_a_damaged_key_and_keeps_it(home: Home) -> None:
    run_cli(home, "init")
    home.key_path.write_bytes(b"garbage")
    forced = run_cli(home, "init", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert Path(json.loads(forced.stdout)["replaced_key"]).read_bytes() == b"garbage"


def test_init_force_with_a_config_it_cannot_write_leaves_the_key_in_place(home: Home) -> None:
    run_cli(home, "init")
    key = home.key_path.read_bytes()
    home.config_path.write_text("[network\n")
    refused = run_cli(home, "init", "--force", "--listen", "/ip4/127.0.0.1/tcp/0")
    assert refused.returncode != 0
    assert home.key_path.read_bytes() == key
    assert list(home.root.glob("node.key.replaced-*")) == []
