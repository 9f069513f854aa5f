"""InFlight: when a download's requests time out, and which are cancelled as superseded."""

from __future__ import annotations

import trio
import trio.testing

from p2pshare.proto.bitfield import Bitfield
from p2pshare.transfer.inflight import InFlight


async def test_only_requests_whose_every_chunk_came_from_elsewhere_are_cancelled() -> None:
    in_flight = InFlight(timeout=30)
    verified = Bitfield(8)
    with (
        in_flight.request("slow", range(2)) as both,
        in_flight.request("slow", range(2, 3)) as single,
        in_flight.request("other", range(3, 4)) as others,
    ):
        verified.set(2)
        verified.set(0)
        in_flight.cancel_superseded({"slow"}, verified)
        # Chunk 1 has not come yet; "other" is not one of the peers named.
        assert [r.superseded for r in (single, both, others)] == [True, False, False]
        assert single.scope.cancel_called
        verified.set(1)
        verified.set(3)
        in_flight.cancel_superseded({"slow"}, verified)
        assert [r.superseded for r in (single, both, others)] == [True, True, False]


async def test_a_request_times_out_only_when_nothing_came_from_its_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    in_flight = InFlight(timeout=10)
    with in_flight.request("peer", range(4)) as waiting, in_flight.request("peer", range(4, 8)):
        await trio.sleep(8)
        in_flight.arrived("peer")
        assert waiting.scope.deadline == trio.current_time() + 10
        with waiting.scope:
            await trio.sleep(20)
        assert waiting.scope.cancelled_caught
        assert trio.current_time() == 18
