"""CPU per request on a new libp2p stream, as a DHT query makes one: open a stream,
choose its protocol, send a request, read the answer, close.

Two hosts in this process on 127.0.0.1, one connection; the process's CPU time
(both sides) and the wall time per exchange, and the encrypted messages written per
exchange (Noise), for p2pshare's stream set-up (the dialer's header and first
proposal in one write, the listener's header and echo in one, p2pshare/net/multiselect.py;
a stream's SYN and ACK written with the next frame, p2pshare/net/muxer.py) against
py-libp2p's own dialer, listener and frame writer on the same hosts and connection,
measured in the same run, alternately in rounds so that a slower minute of the
machine falls on both.

Run: .venv/bin/python bench/streams.py [--exchanges N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from typing import TYPE_CHECKING, cast

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoiseTransportReadWriter
from libp2p.stream_muxer.yamux.yamux import Yamux
from rows import Row, print_table

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.multiselect import PipelinedMultiselectClient, ReadFirstMultiselect

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetStream
    from libp2p.host.basic_host import BasicHost

PROTOCOL = TProtocol("/p2pshare/bench-echo/1.0.0")
REQUEST = b"q" * 60
ROUNDS = 5


class _WriteCounter:
    """Counts Noise messages written, all connections of the process together."""

    def __init__(self) -> None:
        self.count = 0
        self._write = NoiseTransportReadWriter.write_msg
        counter = self

        async def write_msg(
            self: BaseNoiseMsgReadWriter, msg: bytes, prefix_encoded: bool = False
        ) -> None:
            counter.count += 1
            await counter._write(self, msg, prefix_encoded)

        NoiseTransportReadWriter.write_msg = write_msg  # type: ignore[method-assign]

    def restore(self) -> None:
        NoiseTransportReadWriter.write_msg = self._write  # type: ignore[method-assign]


async def _answer(stream: INetStream) -> None:
    request = await stream.read(len(REQUEST))
    await stream.write(request[::-1])
    await stream.close()


async def _exchanges(dialer: IHost, listener: IHost, count: int) -> None:
    for _ in range(count):
        stream = await dialer.new_stream(listener.get_id(), [PROTOCOL])
        await stream.write(REQUEST)
        answer = b""
        while len(answer) < len(REQUEST):
            part = await stream.read(len(REQUEST) - len(answer))
            if not part:
                raise RuntimeError("the listener closed before answering")
            answer += part
        await stream.close()


def _use(dialer: IHost, listener: IHost, *, ours: bool) -> None:
    """p2pshare's stream set-up on both hosts' connection, or py-libp2p's."""
    dialing, listening = cast("BasicHost", dialer), cast("BasicHost", listener)
    dialing.multiselect_client = PipelinedMultiselectClient() if ours else MultiselectClient()
    handlers = listening.multiselect.handlers
    listening.multiselect = ReadFirstMultiselect(handlers) if ours else Multiselect(handlers)
    for host, peer in ((dialer, listener), (listener, dialer)):
        for conn in host.get_network().get_connections(peer.get_id()):
            muxed = cast("Yamux", conn.muxed_conn)
            # The baseline's frame writer is py-libp2p's own, on this one connection.
            if ours:
                vars(muxed).pop("_write_frame", None)
            else:
                plain = types.MethodType(Yamux._write_frame, muxed)  # noqa: SLF001
                muxed._write_frame = plain  # type: ignore[method-assign]  # noqa: SLF001


async def _measure(exchanges: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per set-up: (CPU ms, wall ms, Noise messages) per exchange, one tuple per round."""
    results: dict[str, list[tuple[float, float, float]]] = {"p2pshare": [], "py-libp2p": []}
    counter = _WriteCounter()
    try:
        async with (
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as dialer,
            running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as listener,
        ):
            listener.set_stream_handler(PROTOCOL, _answer)
            await dialer.connect(info_from_p2p_addr(listener.get_addrs()[0]))
            for _ in range(ROUNDS):
                for name, rounds in results.items():
                    _use(dialer, listener, ours=name == "p2pshare")
                    await _exchanges(dialer, listener, 20)  # warm up this set-up
                    written = counter.count
                    cpu, wall = time.process_time(), time.perf_counter()
                    await _exchanges(dialer, listener, exchanges)
                    rounds.append(
                        (
                            (time.process_time() - cpu) * 1000 / exchanges,
                            (time.perf_counter() - wall) * 1000 / exchanges,
                            (counter.count - written) / exchanges,
                        )
                    )
    finally:
        counter.restore()
    return results


def measure(quick: bool, *, exchanges: int | None = None) -> list[Row]:
    exchanges = exchanges or (100 if quick else 400)
    results = trio.run(_measure, exchanges)

    def medians(name: str) -> tuple[float, float, float]:
        rounds = results[name]
        return (
            statistics.median(r[0] for r in rounds),
            statistics.median(r[1] for r in rounds),
            statistics.median(r[2] for r in rounds),
        )

    ours, theirs = medians("p2pshare"), medians("py-libp2p")
    return [
        Row(
            f"a request on a new stream (2 hosts, loopback), CPU / wall per exchange, "
            f"median of {ROUNDS} rounds of {exchanges}",
            f"{ours[0]:.2f} / {ours[1]:.2f} ms",
            f"py-libp2p's stream set-up: {theirs[0]:.2f} / {theirs[1]:.2f} ms",
            "less than py-libp2p's",
            ours[0] < theirs[0],
        ),
        Row(
            "a request on a new stream: encrypted messages written per exchange (both sides)",
            f"{ours[2]:.1f}",
            f"py-libp2p's stream set-up: {theirs[2]:.1f}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(measure(args.quick, exchanges=args.exchanges))


if __name__ == "__main__":
    main()
