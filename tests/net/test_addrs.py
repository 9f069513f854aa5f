"""The announced addresses: one rule, used by identify, `id`, tickets and DHT records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import multiaddr
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.identity.identify.identify import ID as IDENTIFY
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo

from p2pshare.identity import NodeKey
from p2pshare.net.addrs import (
    Recent,
    addrs_factory,
    announce_addrs,
    announced,
    interface_ips,
    observed_addrs,
)
from p2pshare.net.host import build_host, running_host
from p2pshare.net.mapped import MappedAddrs

if TYPE_CHECKING:
    from libp2p.abc import IHost

LAN = ["127.0.0.1", "192.0.2.2", "2001:db8::5", "::1"]


def addrs(*texts: str) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(t) for t in texts]


def texts(found: list[multiaddr.Multiaddr]) -> list[str]:
    return [str(a) for a in found]


def test_wildcard_listen_is_announced_as_each_interface_address_not_loopback() -> None:
    found = announced(addrs("/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4002"), (), LAN)
    assert texts(found) == ["/ip4/192.0.2.2/tcp/4001", "/ip6/2001:db8::5/tcp/4002"]


def test_loopback_is_announced_when_the_node_listens_only_on_loopback() -> None:
    found = announced(addrs("/ip4/127.0.0.1/tcp/4001"), (), LAN)
    assert texts(found) == ["/ip4/127.0.0.1/tcp/4001"]


def test_loopback_is_announced_when_the_machine_has_no_other_interface() -> None:
    found = announced(addrs("/ip4/0.0.0.0/tcp/4001"), (), ["127.0.0.1"])
    assert texts(found) == ["/ip4/127.0.0.1/tcp/4001"]


def test_loopback_listen_is_not_announced_next_to_a_routable_one() -> None:
    found = announced(addrs("/ip4/127.0.0.1/tcp/1", "/ip4/192.0.2.2/tcp/2"), (), LAN)
    assert texts(found) == ["/ip4/192.0.2.2/tcp/2"]


def test_configured_announce_addresses_win() -> None:
    found = announced(addrs("/ip4/0.0.0.0/tcp/4001"), ["/ip4/198.51.100.7/tcp/4001"], LAN)
    assert texts(found) == ["/ip4/198.51.100.7/tcp/4001"]


def test_observed_candidates_are_kept() -> None:
    found = announced(addrs("/ip4/0.0.0.0/tcp/1", "/ip4/198.51.100.9/tcp/1"), (), LAN)
    assert texts(found) == ["/ip4/192.0.2.2/tcp/1", "/ip4/198.51.100.9/tcp/1"]


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@given(
    ips=st.lists(st.one_of(ipv4, ipv6), max_size=6),
    listen=st.lists(
        st.one_of(
            st.builds(lambda ip, port: f"/ip4/{ip}/tcp/{port}", ipv4, st.integers(0, 65535)),
            st.builds(lambda ip, port: f"/ip6/{ip}/tcp/{port}", ipv6, st.integers(0, 65535)),
            st.sampled_from(["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]),
        ),
        max_size=4,
    ),
)
def test_announced_never_holds_a_wildcard_or_loopback_next_to_a_routable_address(
    ips: list[str], listen: list[str]
) -> None:
    found = texts(announced(addrs(*listen), (), ips))
    assert not any(a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")) for a in found)
    loopback = [a for a in found if a.startswith(("/ip4/127.", "/ip6/::1/"))]
    assert not loopback or loopback == found
    assert len(found) == len(set(found))


def test_interface_ips_are_parseable_and_not_link_local() -> None:
    for ip in interface_ips():
        assert not ip.startswith(("169.254.", "fe80:"))


@pytest.mark.trio
async def test_id_identify_and_records_announce_the_same_true_addresses() -> None:
    """host.get_addrs() (identify, id, the ready line) and announce_addrs (tickets, DHT
    records) agree, and neither holds 0.0.0.0 (field test #6)."""
    host = build_host(NodeKey.generate())
    host._addrs_factory = addrs_factory((), lambda: ["127.0.0.1", "192.0.2.2"])  # type: ignore[attr-defined]
    async with host.run([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/0")]):
        port = str(host.get_transport_addrs()[0]).split("/")[-1]
        peer = host.get_id().to_base58()
        assert texts(host.get_addrs()) == [f"/ip4/192.0.2.2/tcp/{port}/p2p/{peer}"]
        assert texts(announce_addrs(host)) == [f"/ip4/192.0.2.2/tcp/{port}"]
        await trio.sleep(0)


async def identify_listen_addrs(ours: IHost, theirs: IHost) -> list[str]:
    """The listen addresses ``theirs`` sends in its identify answer."""
    await ours.connect(PeerInfo(theirs.get_id(), theirs.get_transport_addrs()))
    stream = await ours.new_stream(theirs.get_id(), [IDENTIFY])
    data = b""
    with trio.fail_after(5):
        try:
            while chunk := await stream.read():
                data += chunk
        except StreamEOF:
            pass
    message = parse_identify_response(data)
    return [str(multiaddr.Multiaddr(raw)) for raw in message.listen_addrs]


@pytest.mark.trio
async def test_identify_tells_a_peer_the_announced_addresses() -> None:
    async with (
        running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as ours,
        running_host(
            NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"], announce=["/ip4/198.51.100.7/tcp/9"]
        ) as theirs,
    ):
        assert await identify_listen_addrs(ours, theirs) == ["/ip4/198.51.100.7/tcp/9"]


class FakeMuxedConn:
    def get_remote_address(self) -> tuple[str, int]:
        return ("198.51.100.20", 5555)


class FakeConn:
    is_closed = False
    muxed_conn = FakeMuxedConn()


def test_an_address_one_peer_observed_is_reported_before_libp2p_confirms_it() -> None:
    host = build_host(NodeKey.generate())
    assert observed_addrs(host) == []
    manager = host._observed_addr_manager  # type: ignore[attr-defined]
    manager.record_observation(
        FakeConn(), multiaddr.Multiaddr("/ip4/203.0.113.5/tcp/4001"), addrs("/ip4/0.0.0.0/tcp/4001")
    )
    assert observed_addrs(host) == ["/ip4/203.0.113.5/tcp/4001"]
    assert "/ip4/203.0.113.5/tcp/4001" not in texts(announce_addrs(host)), "one peer is not enough"


def test_interface_addresses_are_read_again_only_after_max_age() -> None:
    reads: list[float] = []
    now = [100.0]
    found = [["192.0.2.1"]]

    def read() -> list[str]:
        reads.append(now[0])
        return list(found[0])

    ips = Recent(read, clock=lambda: now[0], max_age=2.0)
    assert ips() == ["192.0.2.1"]
    now[0] += 1.9
    found[0] = ["192.0.2.1", "198.51.100.7"]  # a VPN comes up
    assert ips() == ["192.0.2.1"]
    now[0] += 0.1
    assert ips() == ["192.0.2.1", "198.51.100.7"]
    assert reads == [100.0, 102.0]
    # What a caller does with the list does not change what the next one gets.
    ips().clear()
    assert ips() == ["192.0.2.1", "198.51.100.7"]


def test_a_new_version_or_forget_reads_again_within_max_age() -> None:
    reads = []
    version = [1]

    def read() -> list[int]:
        reads.append(version[0])
        return [len(reads)]

    recent = Recent(read, version=lambda: version[0], clock=lambda: 5.0, max_age=2.0)
    assert recent() == [1]
    assert recent() == [1]
    version[0] = 2  # a listener started
    assert recent() == [2]
    recent.forget()  # the mapped addresses changed
    assert recent() == [3]
    assert recent() == [3]
    assert reads == [1, 2, 2]


async def test_host_addresses_follow_a_new_listener_and_a_mapped_address_at_once() -> None:
    mapped = MappedAddrs()
    async with running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"], mapped=mapped) as host:
        before = texts(announce_addrs(host))
        assert len(before) == 1
        assert before[0].startswith("/ip4/127.0.0.1/tcp/")
        mapped.set(["/ip4/203.0.113.9/tcp/4001"])
        assert texts(announce_addrs(host)) == [*before, "/ip4/203.0.113.9/tcp/4001"]
        mapped.judge("/ip4/203.0.113.9/tcp/4001", reachable=False)
        assert texts(announce_addrs(host)) == before
