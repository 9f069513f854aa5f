"""The node's numbers for people and for Prometheus: the ``metrics`` control method,
the traffic part of ``status``, and the optional exporter of ``[metrics] listen``.

Counters live in :data:`p2pshare.metrics.METRICS`; the connection and peer counts
are read from the host on the event loop (libp2p's tables are not thread-safe)
and handed to the exporter's thread as a plain snapshot once a second.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.metrics import LOOKUP_BUCKETS, METRICS, Metrics
from p2pshare.proto.listen import is_loopback

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from p2pshare.control.server import Emit, Handler
    from p2pshare.proto.listen import ListenAddr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gauges:
    """What is true of the node right now, as opposed to counted since it started."""

    peers: int = 0
    connections: int = 0
    provide_queue: int = 0


@dataclass
class MetricsApi:
    """``peers`` and ``connections`` count the host's peers and libp2p connections."""

    peers: Callable[[], int]
    connections: Callable[[], int]
    metrics: Metrics = METRICS
    latest: Gauges = field(default_factory=Gauges)

    def gauges(self) -> Gauges:
        return Gauges(
            peers=self.peers(),
            connections=self.connections(),
            provide_queue=self.metrics.snapshot()["dht"]["provides_running"],
        )

    def status(self) -> dict[str, Any]:
        """The live part of ``status``: connections, provide queue, rates and totals."""
        snap = self.metrics.snapshot()
        return {
            "connections": self.connections(),
            "provide_queue": snap["dht"]["provides_running"],
            "traffic": {
                key: snap[key] for key in ("up_bps", "down_bps", "bytes_sent", "bytes_received")
            },
        }

    async def rpc_metrics(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        gauges = self.gauges()
        return self.metrics.snapshot() | {
            "peers": gauges.peers,
            "connections": gauges.connections,
            "provide_queue": gauges.provide_queue,
            "per_peer": self.metrics.peer_traffic(),
        }

    def handlers(self) -> dict[str, Handler]:
        return {"metrics": self.rpc_metrics}

    async def export(
        self,
        listen: ListenAddr,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve /metrics on ``listen`` until cancelled; started with the bound address.

        prometheus_client's server runs on its own thread; this task keeps the
        gauges it reads fresh and shuts it down when the daemon stops.
        """
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

        if not is_loopback(listen):
            log.warning(
                "[metrics] listen %s is not a loopback address: anyone who reaches it sees"
                " this node's traffic counters",
                listen.text,
            )
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_Collector(self, trio.lowlevel.current_trio_token()))
        self.latest = self.gauges()
        server, thread = await trio.to_thread.run_sync(
            lambda: start_http_server(listen.port, listen.host, registry)
        )
        host, port = server.server_address[:2]
        log.info("metrics at http://%s:%d/metrics", listen.host, port)
        try:
            task_status.started((str(host), int(port)))
            await trio.sleep_forever()
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


class _Collector:
    """Builds every metric from one snapshot at each scrape (docs/cli.md lists them)."""

    def __init__(self, api: MetricsApi, token: trio.lowlevel.TrioToken) -> None:
        self._api = api
        self._token = token

    def _gauges(self) -> Gauges:
        """The gauges now, read on the event loop that owns them (a scrape runs in
        prometheus_client's thread): the same numbers ``status`` gives at that moment,
        not a snapshot up to a second old.  While the daemon stops, the last ones."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a scrape, on prometheus_client's thread
            with contextlib.suppress(trio.RunFinishedError):
                self._api.latest = trio.from_thread.run_sync(
                    self._api.gauges, trio_token=self._token
                )
            return self._api.latest
        return self._api.gauges()  # registering the collector, on the event loop

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self._api.metrics.snapshot()
        gauges = self._gauges()
        for name, doc, value in _counters(snap):
            yield CounterMetricFamily(name, doc, value=value)
        jobs = CounterMetricFamily(
            "p2pshare_jobs_run", "Compute jobs run for peers, by outcome.", labels=["outcome"]
        )
        for outcome, value in sorted(snap["jobs_run"].items()):
            jobs.add_metric([outcome], value)
        yield jobs
        yield _lookup_histogram(HistogramMetricFamily, snap["dht"])
        for name, doc, value in (
            ("p2pshare_peers", "Connected peers.", gauges.peers),
            ("p2pshare_connections", "Open libp2p connections.", gauges.connections),
            ("p2pshare_provide_queue", "DHT provides under way.", gauges.provide_queue),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


def _counters(snap: dict[str, Any]) -> tuple[tuple[str, str, float], ...]:
    """The counters of ``snap`` (Metrics.snapshot): name, help text, value."""
    return (
        ("p2pshare_bytes_sent", "Chunk payload bytes sent to peers.", snap["bytes_sent"]),
        (
            "p2pshare_bytes_received",
            "Chunk payload bytes received from peers.",
            snap["bytes_received"],
        ),
        (
            "p2pshare_chunks_verified",
            "Received chunks that matched the signed manifest.",
            snap["chunks_verified"],
        ),
        (
            "p2pshare_chunks_rejected",
            "Received chunks that failed their hash check; the sender was dropped.",
            snap["chunks_rejected"],
        ),
        ("p2pshare_dht_provides", "DHT provides finished.", snap["dht"]["provides"]),
        (
            "p2pshare_dht_messages",
            "GET_PROVIDERS requests answered during lookups.",
            snap["dht"]["messages"],
        ),
        (
            "p2pshare_dht_message_bytes",
            "Bytes of GET_PROVIDERS requests and their answers.",
            snap["dht"]["message_bytes"],
        ),
        (
            "p2pshare_dht_provide_messages",
            "Messages sent by provides: FIND_NODE requests of their lookups, ADD_PROVIDERs.",
            snap["dht"]["provide_messages"],
        ),
        (
            "p2pshare_dht_provide_message_bytes",
            "Bytes of those messages, FIND_NODE answers included.",
            snap["dht"]["provide_message_bytes"],
        ),
        (
            "p2pshare_dht_routing_messages",
            "FIND_NODE requests of the walks that keep the routing table (join, refresh).",
            snap["dht"]["routing_messages"],
        ),
        (
            "p2pshare_dht_routing_message_bytes",
            "Bytes of those requests and their answers.",
            snap["dht"]["routing_message_bytes"],
        ),
    )


def _lookup_histogram(family: Any, dht: dict[str, Any]) -> Metric:
    bounds = [f"{bound:g}" for bound in LOOKUP_BUCKETS] + ["+Inf"]
    cumulative = itertools.accumulate(dht["lookup_buckets"])
    metric: Metric = family(
        "p2pshare_dht_lookup_seconds",
        "Time a DHT provider lookup took.",
        buckets=list(zip(bounds, cumulative, strict=True)),
        sum_value=dht["lookup_seconds_total"],
    )
    return metric
