"""Port mapping: the NAT-PMP client against a fake router on loopback UDP, and the
PortMapping service's renewal, failure, removal and bounds (MockClock: virtual time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
import trio.testing

from p2pshare.errors import UserError
from p2pshare.net.mapped import MappedAddrs
from p2pshare.net.natpmp import (
    NatPmpMapper,
    NatPmpNoAnswerError,
    ask,
    default_gateway,
    gateway_or_default,
)
from p2pshare.net.portmap import (
    DATA,
    FAILED,
    LIBP2P,
    MAPPED,
    STOP_BUDGET,
    PortMapping,
    mappers,
    unmappable,
)
from p2pshare.proto.listen import parse_listen_addr
from p2pshare.proto.natpmp import (
    ExternalAddressRequest,
    MapRequest,
    NatPmpMalformedError,
    NatPmpResultError,
    ResultCode,
    encode_error,
)
from tests.net.fake_gateway import EXTERNAL_IP, FakeGateway

if TYPE_CHECKING:
    from p2pshare.net.streams import LibP2PStream

PORTS = {LIBP2P: 4001, DATA: 4002}


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _gateway(nursery: trio.Nursery, **settings: Any) -> tuple[FakeGateway, NatPmpMapper]:
    gateway = FakeGateway(**settings)
    port = await nursery.start(gateway.serve)
    return gateway, NatPmpMapper("127.0.0.1", port=port)


async def test_natpmp_client_maps_and_removes_a_port() -> None:
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery, shift=True)
        assert await mapper.external_ip() == EXTERNAL_IP
        assert await mapper.map_tcp(4001, 4001, 3600) == (4002, 3600)
        assert gateway.mappings == {4001: 4002}
        await mapper.unmap_tcp(4001, 4002)
        assert gateway.mappings == {}
        assert gateway.removals() == [MapRequest("tcp", 4001, 0, 0)]
        nursery.cancel_scope.cancel()


async def test_natpmp_client_gives_up_after_three_tries_in_under_two_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery, silent=True)
        started = trio.current_time()
        with pytest.raises(NatPmpNoAnswerError, match="after 3 tries"):
            await mapper.external_ip()
        # RFC 6886's 250 ms, doubled after each try: 0.25 + 0.5 + 1.
        assert trio.current_time() - started == pytest.approx(1.75)
        assert gateway.requests == [ExternalAddressRequest()] * 3
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"\x00\x80\x00", NatPmpMalformedError),
        (b"HTTP/1.1 400 Bad Request\r\n", NatPmpMalformedError),
        (encode_error(0, ResultCode.NETWORK_FAILURE, 1), NatPmpResultError),
    ],
)
async def test_a_router_answer_that_is_not_a_result_is_a_typed_error(
    reply: bytes, error: type[Exception]
) -> None:
    async with trio.open_nursery() as nursery:
        _, mapper = await _gateway(nursery, reply=reply)
        with pytest.raises(error):
            await mapper.external_ip()
        nursery.cancel_scope.cancel()


async def test_nothing_listening_at_the_gateway_is_no_answer() -> None:
    async with trio.open_nursery() as nursery:
        gateway, _ = await _gateway(nursery)
        nursery.cancel_scope.cancel()
    with pytest.raises(NatPmpNoAnswerError):
        await ask("127.0.0.1", ExternalAddressRequest(), port=gateway.port)


def test_the_default_gateway_is_read_from_the_kernel_routes(tmp_path: Any) -> None:
    routes = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n"
    )
    assert default_gateway(routes) == "192.168.1.1"
    assert default_gateway(routes.splitlines()[0] + "\n") is None
    path = tmp_path / "route"
    path.write_text(routes)
    assert gateway_or_default("", path) == "192.168.1.1"
    assert gateway_or_default("10.0.0.1", path) == "10.0.0.1"
    path.write_text("")
    with pytest.raises(UserError, match="natpmp_gateway"):
        gateway_or_default("", path)


def test_off_builds_no_mapper_at_all() -> None:
    """With ``port_mapping = "off"`` (the default) nothing could send the router a packet."""
    assert mappers("off", "192.168.1.1", "http://192.168.1.1/x.xml") == []
    assert [m.method for m in mappers("auto", "", "")] == ["natpmp", "upnp"]


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        (["/ip4/127.0.0.1/tcp/4001"], "listens only on loopback (127.0.0.1)"),
        (["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.2/tcp/4002"], "(127.0.0.1, 127.0.0.2)"),
        (["/ip4/127.0.0.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001"], "only on loopback"),
        (["/ip6/2001:db8::1/tcp/4001"], "no IPv4 listen address"),
        (["/ip4/0.0.0.0/tcp/4001"], None),
        (["/ip4/192.168.1.5/tcp/4001"], None),
        (["/ip4/127.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4002"], None),
    ],
)
def test_a_node_no_router_can_forward_to_is_told_why(listen: list[str], why: str | None) -> None:
    reason = unmappable([parse_listen_addr(text) for text in listen])
    if why is None:
        assert reason is None
    else:
        assert reason is not None
        assert why in reason


async def test_mappings_are_renewed_before_they_expire_and_removed_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mapped = MappedAddrs()
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery, lifetime_cap=120)
        service = PortMapping("natpmp", [mapper], mapped)
        async with trio.open_nursery() as inner:
            await inner.start(service.run, PORTS)
            await trio.sleep(1)
            assert service.state == MAPPED
            assert mapped.announced() == [f"/ip4/{EXTERNAL_IP}/tcp/4001"]
            assert mapped.data_port() == 4002
            assert len(gateway.map_requests()) == 2
            # Lifetime 120 s granted: renewed at half of it, twice in 125 s.
            await trio.sleep(124)
            assert len(gateway.map_requests()) == 6
            assert gateway.mappings == {4001: 4001, 4002: 4002}
            inner.cancel_scope.cancel()
        assert gateway.mappings == {}
        assert mapped.announced() == []
        nursery.cancel_scope.cancel()


async def test_a_hung_router_delays_neither_start_nor_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery)
        service = PortMapping("natpmp", [mapper], MappedAddrs())
        async with trio.open_nursery() as inner:
            await inner.start(service.run, PORTS)
            await trio.sleep(1)
            assert service.state == MAPPED
            gateway.silent = True
            stopping = trio.current_time()
            inner.cancel_scope.cancel()
        assert trio.current_time() - stopping <= STOP_BUDGET <= 3
        assert len(gateway.removals()) == 6  # both ports, three tries each

        started = trio.current_time()
        async with trio.open_nursery() as inner:
            await inner.start(service.run, PORTS)
            assert trio.current_time() == started
            inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def test_a_router_that_does_not_answer_gives_status_failed_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mapped = MappedAddrs()
    async with trio.open_nursery() as nursery:
        _, mapper = await _gateway(nursery, reply=encode_error(0, ResultCode.NOT_AUTHORIZED, 1))
        status = await _status_after_one_round(PortMapping("natpmp", [mapper], mapped))
        assert status["state"] == FAILED
        assert "refuses port mappings" in status["reason"]
        assert status["line"].startswith("natpmp failed: the router refuses")
        assert mapped.announced() == []
        nursery.cancel_scope.cancel()


class _Broken:
    method = "upnp"

    async def external_ip(self) -> str:
        raise NatPmpNoAnswerError("no router")

    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]:
        raise AssertionError

    async def unmap_tcp(self, internal: int, external: int) -> None:
        raise AssertionError


async def _status_after_one_round(service: PortMapping) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run, PORTS)
        await trio.sleep(1)
        status: dict[str, Any] = service.status()["port_mapping"]
        nursery.cancel_scope.cancel()
    return status


async def test_auto_uses_the_first_method_that_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        _, mapper = await _gateway(nursery)
        status = await _status_after_one_round(
            PortMapping("auto", [_Broken(), mapper], MappedAddrs())
        )
        assert (status["state"], status["via"], status["external_ip"]) == (
            MAPPED,
            "natpmp",
            EXTERNAL_IP,
        )
        assert status["ports"][LIBP2P] == {"internal": 4001, "external": 4001, "lifetime": 3600}

        both_fail = PortMapping("auto", [_Broken(), _Broken()], MappedAddrs())
        status = await _status_after_one_round(both_fail)
        assert status["reason"] == "upnp: no router; upnp: no router"
        nursery.cancel_scope.cancel()


class _Hangs:
    """A router (UPnP, say) that maps, then never answers again."""

    method = "upnp"

    async def external_ip(self) -> str:
        return EXTERNAL_IP

    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]:
        return external, lifetime

    async def unmap_tcp(self, internal: int, external: int) -> None:
        await trio.sleep_forever()


async def test_stop_takes_at_most_the_budget_however_long_the_router_hangs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = PortMapping("upnp", [_Hangs()], MappedAddrs())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run, PORTS)
        await trio.sleep(1)
        assert service.state == MAPPED
        stopping = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - stopping == pytest.approx(STOP_BUDGET)


class _Stream:
    def __init__(self, ip: str) -> None:
        self.raw = self
        self._ip = ip

    def get_remote_address(self) -> tuple[str, int]:
        return (self._ip, 5555)


def test_the_data_channel_offers_the_routers_port_to_peers_outside() -> None:
    mapped = MappedAddrs()
    service = PortMapping("natpmp", [], mapped, is_outside=lambda ip: ip.startswith("198."))
    outside = cast("LibP2PStream", _Stream("198.51.100.3"))
    inside = cast("LibP2PStream", _Stream("10.0.1.5"))
    assert service.offer_port(outside, 4002) == 4002  # nothing mapped yet
    mapped.set(["/ip4/198.51.100.2/tcp/14001"], 14002)
    assert service.offer_port(outside, 4002) == 14002
    assert service.offer_port(inside, 4002) == 4002
    mapped.judge("/ip4/198.51.100.2/tcp/14001", reachable=False)
    assert service.offer_port(outside, 4002) == 4002


@pytest.mark.parametrize(
    "external_ip",
    ["0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1", "169.254.7.7", "192.168.1.20"],
)
async def test_an_external_address_no_peer_can_reach_is_never_announced(
    autojump_clock: trio.testing.MockClock, external_ip: str
) -> None:
    mapped = MappedAddrs()
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery, external_ip=external_ip)
        status = await _status_after_one_round(PortMapping("natpmp", [mapper], mapped))
        assert status["state"] == FAILED
        assert external_ip in status["reason"]
        assert mapped.announced() == []
        assert gateway.map_requests() == []  # nothing forwarded to a useless address
        nursery.cancel_scope.cancel()


async def test_a_lifetime_shorter_than_a_minute_is_renewed_before_it_lapses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, mapper = await _gateway(nursery, lifetime_cap=20)
        service = PortMapping("natpmp", [mapper], MappedAddrs())
        async with trio.open_nursery() as inner:
            await inner.start(service.run, PORTS)
            await trio.sleep(1)
            assert len(gateway.map_requests()) == 2
            # Granted 20 s: renewed every 10 s, so never a moment unmapped.
            await trio.sleep(30)
            assert len(gateway.map_requests()) == 8
            inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
