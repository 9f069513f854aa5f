"""The ``metrics`` control method and the Prometheus exporter of ``[metrics] listen``."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import trio

from p2pshare.metrics import Metrics
from p2pshare.node.metrics_api import MetricsApi
from p2pshare.proto.listen import ListenAddr

EPHEMERAL = ListenAddr("127.0.0.1:0", "127.0.0.1", 0)

METRIC_NAMES = [
    "p2pshare_bytes_sent_total",
    "p2pshare_bytes_received_total",
    "p2pshare_chunks_verified_total",
    "p2pshare_chunks_rejected_total",
    "p2pshare_peers",
    "p2pshare_connections",
    "p2pshare_provide_queue",
    "p2pshare_dht_lookup_seconds_count",
    "p2pshare_dht_lookup_seconds_bucket",
    "p2pshare_dht_provides_total",
    "p2pshare_dht_messages_total",
    "p2pshare_dht_message_bytes_total",
    "p2pshare_dht_provide_messages_total",
    "p2pshare_dht_provide_message_bytes_total",
    "p2pshare_jobs_run_total",
]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def api() -> MetricsApi:
    counters = Metrics(lambda: 100.0)
    counters.sent("peerA", 5000)
    counters.received("peerB", 7000)
    counters.chunk_checked(ok=True)
    counters.chunk_checked(ok=False)
    counters.job_run("result")
    counters.lookup_done(0.3)
    counters.dht_message(250)
    counters.provide_message(90)
    return MetricsApi(lambda: 2, lambda: 3, counters)


async def test_exporter_serves_every_documented_metric_and_stops_with_its_task() -> None:
    metrics = api()
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(metrics.export, EPHEMERAL)
        text = await trio.to_thread.run_sync(scrape, port)
        nursery.cancel_scope.cancel()
    for name in METRIC_NAMES:
        assert name in text, name
    assert "p2pshare_bytes_sent_total 5000.0" in text
    assert "p2pshare_bytes_received_total 7000.0" in text
    assert "p2pshare_chunks_rejected_total 1.0" in text
    assert "p2pshare_dht_provide_message_bytes_total 90.0" in text
    assert 'p2pshare_jobs_run_total{outcome="result"} 1.0' in text
    assert "p2pshare_peers 2.0" in text
    assert "p2pshare_connections 3.0" in text
    assert 'p2pshare_dht_lookup_seconds_bucket{le="0.5"} 1.0' in text
    assert 'p2pshare_dht_lookup_seconds_bucket{le="0.25"} 0.0' in text
    # Peer IDs stay out of Prometheus: only the control socket's owner sees who.
    assert "peerA" not in text
    with pytest.raises(urllib.error.URLError):
        await trio.to_thread.run_sync(scrape, port)


async def test_documented_metric_names_are_in_cli_doc() -> None:
    doc = await trio.Path(__file__).parent.parent.parent.joinpath("docs", "cli.md").read_text()
    for name in METRIC_NAMES:
        family = name.removesuffix("_bucket").removesuffix("_count")
        assert f"`{family}`" in doc, family


async def test_metrics_method_gives_totals_rates_gauges_and_peers() -> None:
    reply = await api().rpc_metrics({}, _no_events)
    assert reply["peers"] == 2
    assert reply["connections"] == 3
    assert reply["provide_queue"] == 0
    assert reply["bytes_sent"] == 5000
    assert reply["per_peer"]["peerA"]["bytes_sent"] == 5000
    assert reply["per_peer"]["peerB"]["down_bps"] == 700.0
    assert reply["dht"]["lookups"] == 1


async def _no_events(_name: str, _data: dict[str, object]) -> None:
    raise AssertionError("metrics sends no events")
