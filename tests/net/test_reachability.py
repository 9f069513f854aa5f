"""Reachability: AutoNAT verdicts, dial-back candidates, the data-channel policy, and the
dial-back server that py-libp2p 0.8.1 gets wrong (two hosts on 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import socket
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from libp2p.host.autonat import AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.mapped import MappedAddrs
from p2pshare.net.reachability import (
    PRIVATE,
    PUBLIC,
    UNKNOWN,
    DialBackServer,
    Reachability,
    candidate_addrs,
    data_channel_refusal,
    verdict,
)
from p2pshare.net.streams import HandlerGuard, HandlerLimits

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
LAN = [ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("127.0.0.0/8")]


def test_one_successful_dial_back_proves_the_node_public() -> None:
    assert verdict([Message.E_DIAL_ERROR, Message.OK]) == PUBLIC


def test_only_failed_dial_backs_make_the_node_private() -> None:
    assert verdict([Message.E_DIAL_ERROR]) == PRIVATE
    assert verdict([Message.E_DIAL_ERROR, Message.E_DIAL_REFUSED]) == PRIVATE


def test_refusals_or_no_answers_leave_reachability_unknown() -> None:
    assert verdict([]) == UNKNOWN
    assert verdict([Message.E_DIAL_REFUSED, Message.E_BAD_REQUEST]) == UNKNOWN


def test_dial_back_candidates_pair_observed_ips_with_listen_ports() -> None:
    found = candidate_addrs(
        ["/ip4/0.0.0.0/tcp/4001", "/ip4/192.168.1.5/tcp/4002", "/ip6/::/tcp/4001"],
        ["203.0.113.9", "203.0.113.9"],
        [],
    )
    assert found == ["/ip4/203.0.113.9/tcp/4001", "/ip4/203.0.113.9/tcp/4002"]


def test_dial_back_candidates_keep_announced_and_public_listen_addresses() -> None:
    found = candidate_addrs(["/ip4/8.8.4.4/tcp/4001"], [], ["/ip4/203.0.113.9/tcp/5000"])
    assert found == ["/ip4/203.0.113.9/tcp/5000", "/ip4/8.8.4.4/tcp/4001"]


def _refusal(path: str | None, ip: str | None, state: str, *, forwarded: bool = False) -> Any:
    return data_channel_refusal(path, ip, state, forwarded=forwarded, local=LAN)


def test_no_data_channel_is_offered_over_a_relayed_connection() -> None:
    assert _refusal("relayed", None, PUBLIC) is not None


def test_a_node_behind_nat_offers_no_data_channel_outside_its_lan() -> None:
    # A hole-punched connection is direct, but the data port is a separate, unmapped one.
    assert "behind NAT" in _refusal("direct", "198.51.100.3", PRIVATE)


def test_the_data_channel_is_offered_where_it_is_reachable() -> None:
    assert _refusal("direct", "192.168.1.7", PRIVATE) is None  # same LAN
    assert _refusal("direct", "198.51.100.3", PRIVATE, forwarded=True) is None
    assert _refusal("direct", "198.51.100.3", PUBLIC) is None
    assert _refusal("direct", "198.51.100.3", UNKNOWN) is None


def _guard(host: Any) -> HandlerGuard:
    return HandlerGuard(host, HandlerLimits())


def _dial_back_server(host: Any) -> DialBackServer:
    return DialBackServer(host, _guard(host))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _ask_dial_back(serve: Any) -> tuple[int, int]:
    """Two connected hosts; the second asks the first (served by ``serve``) to dial it
    back at a closed port and at its real address. Both verdicts."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
        client = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
        serve(server)
        asker = AutoNATService(client, serve=False)  # type: ignore[arg-type]
        await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
        closed = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{_closed_port()}")
        unreachable, _ = await asker.query_server(server.get_id(), [closed.to_bytes()], 20)
        real = client.get_transport_addrs()[0]
        reachable, _ = await asker.query_server(server.get_id(), [real.to_bytes()], 20)
        return unreachable, reachable


async def test_py_libp2p_autonat_server_confirms_an_address_where_nothing_listens() -> None:
    # The fault DialBackServer exists for: the stock server "dials back" with
    # host.connect, which returns the connection the request came in on.
    with trio.fail_after(60):
        unreachable, _ = await _ask_dial_back(AutoNATService)
    assert unreachable == Message.OK


async def test_dial_back_server_confirms_only_an_address_that_reaches_the_peer() -> None:
    with trio.fail_after(60):
        unreachable, reachable = await _ask_dial_back(
            lambda host: DialBackServer(host, _guard(host))
        )
    assert unreachable == Message.E_DIAL_ERROR
    assert reachable == Message.OK


async def test_a_node_a_peer_can_dial_back_finds_itself_public() -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            client = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            Reachability(server, _guard(server), [])
            # py-libp2p keeps no observed loopback addresses: the candidate is announced.
            reach = Reachability(client, _guard(client), [str(client.get_transport_addrs()[0])])
            await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
            # Until identify has told the client that the server speaks AutoNAT.
            while reach.state == UNKNOWN:
                await reach.check()
                await trio.sleep(0.2)
            assert reach.status() == {
                "reachability": PUBLIC,
                "confirmed_addrs": [str(client.get_transport_addrs()[0])],
            }


def test_a_mapped_address_is_announced_until_refuted_and_again_once_confirmed() -> None:
    mapped = MappedAddrs()
    changes: list[list[str]] = []
    mapped.on_change(lambda: changes.append(mapped.announced()))
    mapped.set(["/ip4/203.0.113.7/tcp/4001"], 4002)
    mapped.judge("/ip4/203.0.113.7/tcp/4001", reachable=False)
    assert (mapped.announced(), mapped.data_port()) == ([], None)
    # A renewal with the same address keeps the verdict; a later dial-back may revise it.
    mapped.set(["/ip4/203.0.113.7/tcp/4001"], 4002)
    assert mapped.all() == ["/ip4/203.0.113.7/tcp/4001"]
    mapped.judge("/ip4/203.0.113.7/tcp/4001", reachable=True)
    assert (mapped.announced(), mapped.data_port()) == (["/ip4/203.0.113.7/tcp/4001"], 4002)
    assert changes == [["/ip4/203.0.113.7/tcp/4001"], [], ["/ip4/203.0.113.7/tcp/4001"]]


async def test_autonat_refutes_a_mapped_address_that_does_not_reach_the_node() -> None:
    """A router may map a port that nobody outside reaches (a second NAT in front of it):
    the host announces the mapped address until a dial-back fails there."""
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            mapped = MappedAddrs()
            client = await stack.enter_async_context(
                running_host(NodeKey.generate(), LOOPBACK, mapped=mapped)
            )
            Reachability(server, _guard(server), [])
            reach = Reachability(client, _guard(client), [], mapped=mapped)
            dead = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
            working = str(client.get_transport_addrs()[0])
            mapped.set([dead, working])
            announced = [str(a).split("/p2p/")[0] for a in client.get_addrs()]
            assert dead in announced
            assert working in announced
            await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
            while mapped.verdicts()[dead] == "candidate":
                await reach.check()
                await trio.sleep(0.2)
            assert mapped.verdicts() == {dead: "refuted", working: "confirmed"}
            announced = [str(a).split("/p2p/")[0] for a in client.get_addrs()]
            assert dead not in announced
            assert working in announced
            assert reach.state == PUBLIC
