"""What a running node counts about itself: traffic, chunks, DHT lookups, jobs.

The code that moves bytes reports through one call each, into the process's
:data:`METRICS`:

* :meth:`Metrics.sent` -- chunk payload bytes written to a peer
  (p2pshare.transfer.uploader, ``TransferServer._send_data``);
* :meth:`Metrics.received` -- chunk payload bytes read from a peer
  (p2pshare.transfer.peer, ``PeerLink._deliver``);
* :meth:`Metrics.chunk_checked` -- a received chunk passed or failed its hash check
  (p2pshare.transfer.output, ``check_and_write``, in a worker thread);
* :func:`timed_lookup` and :func:`counted_provide` decorate the DHT lookup and
  provide of p2pshare.net.dht; :meth:`Metrics.dht_message` counts each
  GET_PROVIDERS exchange of a lookup, :meth:`Metrics.provide_message` each message
  a provide sends (its FIND_NODE lookup and its ADD_PROVIDERs),
  :meth:`Metrics.routing_message` each FIND_NODE exchange of the walks that keep the
  routing table (joining, refreshing);
* :meth:`Metrics.job_run` -- a compute job this node ran for a peer ended
  (p2pshare.compute.service).

The control API reads :meth:`Metrics.snapshot` (``status``, ``peers``, ``metrics``)
and the optional Prometheus exporter (p2pshare.node.metrics_api) reads the same
numbers, so the two never disagree.  One daemon runs per process; tests that run
several nodes in one process share the counters, and tests of the counters make
their own :class:`Metrics` with a fake clock.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from p2pshare.proto.rates import RateWindow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RATE_WINDOW_S = 10.0
# Per-peer rows kept; past this, peers with no traffic in the window are forgotten
# first, so a node that met thousands of peers does not keep a row for each.
MAX_PEERS = 1024
# Upper bounds (seconds) of the DHT lookup latency histogram.
LOOKUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _PeerTraffic:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.up = RateWindow(RATE_WINDOW_S)
        self.down = RateWindow(RATE_WINDOW_S)


@dataclass
class _Dht:
    lookups: int = 0
    lookup_seconds: float = 0.0
    # Count of lookups at or under each LOOKUP_BUCKETS bound (not cumulative).
    lookup_buckets: list[int] = field(default_factory=lambda: [0] * (len(LOOKUP_BUCKETS) + 1))
    provides: int = 0
    provides_running: int = 0
    messages: int = 0
    message_bytes: int = 0
    provide_messages: int = 0
    provide_message_bytes: int = 0
    routing_messages: int = 0
    routing_message_bytes: int = 0


class Metrics:
    """Counters and live rates of one node; safe to call from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.chunks_verified = 0
        self.chunks_rejected = 0
        self.jobs: dict[str, int] = {}
        self.dht = _Dht()
        self._up = RateWindow(RATE_WINDOW_S)
        self._down = RateWindow(RATE_WINDOW_S)
        self._peers: dict[str, _PeerTraffic] = {}

    # -- what the shells call

    def sent(self, peer: str, nbytes: int) -> None:
        with self._lock:
            now = self._clock()
            self.bytes_sent += nbytes
            self._up.add(now, nbytes)
            row = self._peer(peer, now)
            row.sent += nbytes
            row.up.add(now, nbytes)

    def received(self, peer: str, nbytes: int) -> None:
        with self._lock:
            now = self._clock()
            self.bytes_received += nbytes
            self._down.add(now, nbytes)
            row = self._peer(peer, now)
            row.received += nbytes
            row.down.add(now, nbytes)

    def chunk_checked(self, *, ok: bool) -> None:
        with self._lock:
            if ok:
                self.chunks_verified += 1
            else:
                self.chunks_rejected += 1

    def job_run(self, outcome: str) -> None:
        """A job this node ran for a peer ended: ``result`` or why not."""
        with self._lock:
            self.jobs[outcome] = self.jobs.get(outcome, 0) + 1

    def dht_message(self, nbytes: int) -> None:
        """One GET_PROVIDERS request of a lookup and its answer, ``nbytes`` together."""
        with self._lock:
            self.dht.messages += 1
            self.dht.message_bytes += nbytes

    def provide_message(self, nbytes: int) -> None:
        """One message a provide sent to put its record (a FIND_NODE request, with its
        answer, or an ADD_PROVIDER), ``nbytes`` both ways."""
        with self._lock:
            self.dht.provide_messages += 1
            self.dht.provide_message_bytes += nbytes

    def routing_message(self, nbytes: int) -> None:
        """One FIND_NODE request of a routing-table walk (joining, refreshing) and its
        answer, ``nbytes`` together."""
        with self._lock:
            self.dht.routing_messages += 1
            self.dht.routing_message_bytes += nbytes

    def lookup_done(self, seconds: float) -> None:
        with self._lock:
            self.dht.lookups += 1
            self.dht.lookup_seconds += seconds
            self.dht.lookup_buckets[bisect.bisect_left(LOOKUP_BUCKETS, seconds)] += 1

    def provide_started(self) -> None:
        with self._lock:
            self.dht.provides_running += 1

    def provide_done(self) -> None:
        with self._lock:
            self.dht.provides += 1
            self.dht.provides_running -= 1

    # -- what the control API and the exporter read

    def _peer(self, peer: str, now: float) -> _PeerTraffic:
        row = self._peers.get(peer)
        if row is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_idle(now)
            row = self._peers[peer] = _PeerTraffic()
        return row

    def _forget_idle(self, now: float) -> None:
        idle = [p for p, r in self._peers.items() if not r.up.rate(now) and not r.down.rate(now)]
        for peer in idle or list(self._peers)[: len(self._peers) // 2]:
            del self._peers[peer]

    def peer_traffic(self) -> dict[str, dict[str, float]]:
        """Per peer: bytes sent and received, and bytes per second each way now."""
        with self._lock:
            now = self._clock()
            return {
                peer: {
                    "bytes_sent": row.sent,
                    "bytes_received": row.received,
                    "up_bps": round(row.up.rate(now), 1),
                    "down_bps": round(row.down.rate(now), 1),
                }
                for peer, row in self._peers.items()
            }

    def snapshot(self) -> dict[str, Any]:
        """Every counter as plain values, for the control API (docs/control-api.md)."""
        with self._lock:
            now = self._clock()
            dht = self.dht
            return {
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
                "up_bps": round(self._up.rate(now), 1),
                "down_bps": round(self._down.rate(now), 1),
                "chunks_verified": self.chunks_verified,
                "chunks_rejected": self.chunks_rejected,
                "jobs_run": dict(self.jobs),
                "dht": {
                    "lookups": dht.lookups,
                    "lookup_seconds_total": round(dht.lookup_seconds, 6),
                    "lookup_buckets": list(dht.lookup_buckets),
                    "provides": dht.provides,
                    "provides_running": dht.provides_running,
                    "messages": dht.messages,
                    "message_bytes": dht.message_bytes,
                    "provide_messages": dht.provide_messages,
                    "provide_message_bytes": dht.provide_message_bytes,
                    "routing_messages": dht.routing_messages,
                    "routing_message_bytes": dht.routing_message_bytes,
                },
            }


METRICS = Metrics()
"""The counters of the node this process runs."""


def timed_lookup(
    clock: Callable[[], float],
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
    """Decorate a DHT lookup: count it and time it by ``clock``."""

    def decorate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        @functools.wraps(fn)
        async def timed(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            started = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                METRICS.lookup_done(clock() - started)

        return timed

    return decorate


def counted_provide(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Decorate a DHT provide: the provide queue counts it while it runs."""

    @functools.wraps(fn)
    async def counted(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        METRICS.provide_started()
        try:
            return await fn(*args, **kwargs)
        finally:
            METRICS.provide_done()

    return counted
