"""libp2p's noise about gone peers is summarised; everything else it says passes."""

from __future__ import annotations

import logging

from p2pshare.net.libp2p_log import Libp2pNoiseFilter, quiet_libp2p_logging

PEER = "12D3KooWJwgczmR33R9JRHfqeG36QBNWbeGSPmosLNWnYR1MUdeQ"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_repeated_dead_peer_warnings_become_one_line_and_one_summary() -> None:
    clock = FakeClock()
    noise = Libp2pNoiseFilter(interval=600, clock=clock)
    message = f"Failed to open stream to {PEER}: Peer {PEER} recently failed all addresses"
    passed = 0
    for i in range(300):
        clock.now = i * 1.0
        passed += noise.filter(_record("libp2p.kad_dht.peer_routing", message))
    assert passed == 1
    assert noise.flush() == []
    clock.now = 600.0
    assert noise.flush() == [
        f"libp2p: DHT streams to unreachable peers: 299 more in the last 600 s (last: {message})"
    ]


def test_each_known_kind_is_summarised_apart() -> None:
    noise = Libp2pNoiseFilter(interval=600, clock=FakeClock())
    kinds = [
        ("libp2p.kad_dht.provider_store", f"Error sending ADD_PROVIDER to {PEER}: gone"),
        ("libp2p.transport.tcp.tcp", "Failed to open TCP stream: all attempts to connect to x"),
        ("libp2p.network.swarm", f"Peer {PEER} recently failed all addresses (negative cache)"),
    ]
    for name, message in kinds:
        assert noise.filter(_record(name, message))
        assert not noise.filter(_record(name, message))


def test_unknown_libp2p_warnings_and_our_own_lines_pass() -> None:
    noise = Libp2pNoiseFilter(interval=600, clock=FakeClock())
    for _ in range(5):
        assert noise.filter(_record("libp2p.host.basic_host", "something new went wrong"))
        assert noise.filter(_record("p2pshare.node.daemon", "Failed to open stream to x"))


def test_a_record_seen_by_two_handlers_is_counted_once() -> None:
    clock = FakeClock()
    noise = Libp2pNoiseFilter(interval=10, clock=clock)
    first = _record("libp2p.kad_dht.peer_routing", "Failed to open stream to a")
    assert noise.filter(first)
    assert noise.filter(first)  # the second handler gets the same answer
    second = _record("libp2p.kad_dht.peer_routing", "Failed to open stream to b")
    assert not noise.filter(second)
    assert not noise.filter(second)
    clock.now = 10.0
    assert noise.flush() == [
        "libp2p: DHT streams to unreachable peers: 1 more in the last 10 s "
        "(last: Failed to open stream to b)"
    ]


def test_auto_connector_start_line_is_not_logged() -> None:
    quiet_libp2p_logging(logging.INFO)
    assert logging.getLogger("libp2p").propagate
    assert not logging.getLogger("libp2p.network.auto_connector").isEnabledFor(logging.INFO)
    assert logging.getLogger("libp2p.network.auto_connector").isEnabledFor(logging.WARNING)


def test_relay_and_dcutr_errors_about_streams_that_ended_normally_are_summarised() -> None:
    """Lines seen on the relay and both NATed nodes in every bench/natlab.py run."""
    relay = "libp2p.relay.circuit_v2.protocol"
    normal_ends = [
        (relay, f"Error reading from hop stream from {PEER}: "),
        (relay, "Unexpected error reading from stream: "),
        (relay, "Unexpected error reading from stream: Cannot read from stream; stream is reset"),
        (relay, "Error relaying data: Cannot read from stream; stream is reset"),
        (
            relay,
            f"Unexpected error handling hop stream from {PEER}: Cannot write to stream; "
            "closed for writing",
        ),
        (relay, "Error sending status message: Cannot write to stream; closed for writing"),
        ("libp2p.relay.circuit_v2.dcutr", f"Error in DCUtR protocol with peer {PEER}: "),
    ]
    clock = FakeClock()
    noise = Libp2pNoiseFilter(interval=600, clock=clock)
    passed = sum(noise.filter(_record(name, text, logging.ERROR)) for name, text in normal_ends)
    assert passed == 1, "only the first line of the kind is logged in full"
    clock.now = 600.0
    [summary] = noise.flush()
    assert summary.startswith("libp2p: relay and DCUtR streams closed by their peer: 6 more")


def test_relay_errors_that_say_something_else_pass() -> None:
    noise = Libp2pNoiseFilter(interval=600, clock=FakeClock())
    relay = "libp2p.relay.circuit_v2.protocol"
    for text in (
        f"Error reading from hop stream from {PEER}: invalid protobuf",
        "Error establishing relay connection: no reservation",
    ):
        for _ in range(3):
            assert noise.filter(_record(relay, text, logging.ERROR))


def test_a_cancelled_connection_set_up_is_not_logged_but_other_add_conn_failures_are() -> None:
    """Field: a node stopping while a peer connected logged py-libp2p's traceback."""
    noise = Libp2pNoiseFilter()
    cancelled = (
        f"[ADDCONN_FAIL] add_conn failed for peer {PEER}: Cancelled(source='nursery', "
        "reason=None)\nTraceback (most recent call last):\n  ...\ntrio.Cancelled: ..."
    )
    assert not noise.filter(_record("libp2p.network.swarm", cancelled))
    failed = f"[ADDCONN_FAIL] add_conn failed for peer {PEER}: SwarmException('limit')\n..."
    assert noise.filter(_record("libp2p.network.swarm", failed))
    assert noise.flush() == []
