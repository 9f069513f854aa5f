"""``p2pshare top``: what one screen shows, how often it redraws, and Ctrl-C."""

from __future__ import annotations

import importlib
import json
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from p2pshare.control import client as _client
from p2pshare.errors import ExitCode

_top = importlib.import_module("p2pshare_cli.top")
_main = importlib.import_module("p2pshare_cli.main")


def reply(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "bytes_sent": 3 << 20,
        "bytes_received": 5 << 20,
        "up_bps": 1536.0,
        "down_bps": 2 << 20,
        "chunks_verified": 42,
        "chunks_rejected": 1,
        "jobs_run": {"result": 2},
        "dht": {
            "lookups": 4,
            "lookup_seconds_total": 2.0,
            "lookup_buckets": [0] * 11,
            "provides": 7,
            "provides_running": 1,
            "messages": 10,
            "message_bytes": 4000,
        },
        "peers": 2,
        "connections": 3,
        "provide_queue": 1,
        "per_peer": {
            "12D3KooWquiet": {
                "bytes_sent": 0,
                "bytes_received": 10,
                "up_bps": 0.0,
                "down_bps": 0.0,
            },
            "12D3KooWbusy": {
                "bytes_sent": 3 << 20,
                "bytes_received": 0,
                "up_bps": 1536.0,
                "down_bps": 0.0,
            },
        },
    }
    return doc | fields


def screen(m: dict[str, Any]) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(_top.render(m))
    return console.export_text()


def test_top_shows_rates_totals_dht_jobs_and_busiest_peer_first() -> None:
    text = screen(reply())
    assert "1.5 KiB/s  (3.0 MiB since start)" in text
    assert "2.0 MiB/s  (5.0 MiB since start)" in text
    assert "2 (3 connections)" in text
    assert "42 verified, 1 rejected" in text
    assert "4 lookups, mean 0.50 s, 2.5 messages per lookup; 7 provides, 1 under way" in text
    assert "result 2" in text
    assert text.index("12D3KooWbusy") < text.index("12D3KooWquiet")


def test_top_of_an_idle_node_shows_no_peer_table_and_no_division_by_zero() -> None:
    idle = reply(jobs_run={}, per_peer={})
    idle["dht"] = idle["dht"] | {"lookups": 0, "lookup_seconds_total": 0.0}
    text = screen(idle)
    assert "0 lookups, mean -, - messages per lookup" in text
    assert "jobs run  none" in text
    assert "peer" not in text.split("jobs run")[1]


def test_top_lists_only_the_busiest_peers_and_counts_the_rest() -> None:
    many = {
        f"peer{n:02}": {"bytes_sent": n, "bytes_received": 0, "up_bps": float(n), "down_bps": 0.0}
        for n in range(_top.TOP_PEERS + 5)
    }
    text = screen(reply(per_peer=many))
    assert "... and 5 more" in text
    assert "peer00" not in text
    assert f"peer{_top.TOP_PEERS + 4:02}" in text


def test_top_redraws_once_a_second_count_times() -> None:
    fetched: list[int] = []
    slept: list[float] = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        return reply()

    _top.run_top(fetch, 3, sleep=slept.append)
    assert len(fetched) == 3
    assert slept == [1.0, 1.0]


def test_ctrl_c_ends_top_quietly_with_status_0(monkeypatch: Any, tmp_path: Any) -> None:
    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_top, "run_top", interrupted)
    result = CliRunner().invoke(_main.cli, ["--home", str(tmp_path), "top"])
    assert result.exit_code == 0
    assert "interrupted" not in result.output


def test_top_json_prints_one_snapshot_and_exits(monkeypatch: Any, tmp_path: Any) -> None:
    calls: list[str] = []

    def call(_home: Any, method: str, _params: Any = None) -> dict[str, Any]:
        calls.append(method)
        return reply()

    def never(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("top --json must not draw the live screen")

    monkeypatch.setattr(_client, "call", call)
    monkeypatch.setattr(_top, "run_top", never)
    result = CliRunner().invoke(_main.cli, ["--home", str(tmp_path), "top", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == reply()
    assert calls == ["metrics"]


def test_top_json_with_count_is_a_usage_error(tmp_path: Any) -> None:
    result = CliRunner().invoke(
        _main.cli, ["--home", str(tmp_path), "top", "--json", "--count", "2"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "leave out --count" in result.output
