"""Listen addresses: parsed to plain values, refused with a reason, bound exclusively."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.listen import ListenError, check_can_listen, parse_listen_addrs
from p2pshare.proto.listen import parse_listen_addr


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("/ip4/0.0.0.0/tcp/4001", "0.0.0.0", 4001),
        ("/ip4/127.0.0.1/tcp/0", "127.0.0.1", 0),
        ("/ip6/::/tcp/4001", "::", 4001),
        ("/ip6/0:0::1/tcp/65535", "::1", 65535),
    ],
)
def test_listen_addr_gives_host_and_port(text: str, host: str, port: int) -> None:
    addr = parse_listen_addr(text)
    assert (addr.host, addr.port, addr.text) == (host, port, text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/ip4/127.0.0.1/udp/4001/quic-v1", "TCP only"),
        ("/ip4/127.0.0.1", "TCP only"),
        ("/dns4/example.com/tcp/4001", "IP address"),
        ("/ip4/::1/tcp/4001", "not an /ip4 address"),
        ("/ip6/1.2.3.4/tcp/4001", "not an /ip6 address"),
        ("/ip4/300.1.1.1/tcp/4001", "not an IP address"),
        ("/ip4/1.2.3.4/tcp/65536", "port from 0 to 65535"),
        ("/ip4/1.2.3.4/tcp/-1", "port from 0 to 65535"),
        ("/ip4/1.2.3.4/tcp/1/p2p/x", "port from 0 to 65535"),
        ("tcp:4001", "not a multiaddr"),
        ("", "not a multiaddr"),
    ],
)
def test_bad_listen_addr_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_listen_addr(text)


@given(st.text(max_size=40))
def test_listen_addr_parser_only_raises_value_error(text: str) -> None:
    try:
        addr = parse_listen_addr(text)
    except ValueError:
        return
    assert 0 <= addr.port <= 65535
    socket.inet_pton(socket.AF_INET6 if addr.ipv6 else socket.AF_INET, addr.host)


def test_empty_listen_list_is_a_config_error() -> None:
    with pytest.raises(ListenError, match="at least one address"):
        parse_listen_addrs([])


def test_port_held_by_a_reuseport_listener_is_refused() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        text = f"/ip4/127.0.0.1/tcp/{port}"
        with pytest.raises(ListenError) as info:
            check_can_listen(parse_listen_addr(text), "[network] listen in X")
    assert str(info.value) == (
        f"cannot listen on {text} (from [network] listen in X): "
        "the port is in use by another program or another p2pshare daemon"
    )


def test_ip_that_is_not_ours_is_refused() -> None:
    with pytest.raises(ListenError, match="not one of this machine's"):
        check_can_listen(parse_listen_addr("/ip4/192.0.2.1/tcp/0"))


def test_free_port_passes_the_check() -> None:
    check_can_listen(parse_listen_addr("/ip4/127.0.0.1/tcp/0"))


async def test_second_host_on_a_port_in_use_raises_instead_of_sharing_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    async with running_host(NodeKey.generate(), [addr]) as first:
        assert any(str(a).startswith(addr) for a in first.get_addrs())
        with pytest.raises(ListenError, match="the port is in use"):
            async with running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0", addr]):
                pytest.fail("the second host started")
