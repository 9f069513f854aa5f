"""Dialing a peer: the address given is the address dialed (field test #7, #19)."""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest
import trio
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.net.addrs import interface_ips, is_own, without_peer_id
from p2pshare.net.host import running_host
from p2pshare.net.peers import (
    ADDR_TTL,
    connect,
    connect_exactly,
    connected_peers,
    on_connected,
    open_stream,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from libp2p.abc import IHost

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
TIMEOUT = 10.0


def closed_port_addr() -> Multiaddr:
    """A loopback address nobody listens on: dials to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")


def stored(host: IHost, other: IHost) -> list[str]:
    return [str(a) for a in host.get_peerstore().addrs(other.get_id())]


async def two_hosts(stack: AsyncExitStack) -> tuple[IHost, IHost]:
    ours = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
    theirs = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
    return ours, theirs


async def forget_after_failure(ours: IHost, theirs: IHost, stale: Multiaddr) -> None:
    """``ours`` remembers ``theirs`` at ``stale`` and has failed to dial it there, as a
    node does after a peer restarted on a new port."""
    ours.get_peerstore().add_addrs(theirs.get_id(), [stale], ADDR_TTL)
    with pytest.raises(Exception, match="no addresses established"):
        await ours.connect(PeerInfo(theirs.get_id(), [stale]))


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[IHost, IHost]]:
    async with AsyncExitStack() as stack:
        yield await two_hosts(stack)


@pytest.mark.trio
async def test_connect_to_a_moved_peer_dials_the_new_address_despite_the_negative_cache(
    hosts: tuple[IHost, IHost],
) -> None:
    ours, theirs = hosts
    await forget_after_failure(ours, theirs, closed_port_addr())
    new = theirs.get_transport_addrs()[0]
    with trio.fail_after(TIMEOUT):
        await connect_exactly(ours, theirs.get_id(), new, TIMEOUT)
    assert theirs.get_id() in ours.get_connected_peers()
    assert stored(ours, theirs)[0] == str(new)


@pytest.mark.trio
async def test_a_stale_remembered_address_is_replaced_by_the_new_one_that_works(
    hosts: tuple[IHost, IHost],
) -> None:
    ours, theirs = hosts
    stale = closed_port_addr()
    await forget_after_failure(ours, theirs, stale)
    new = theirs.get_transport_addrs()[0]
    # The new address arrives second, as a DHT record's does after a remembered one.
    with trio.fail_after(TIMEOUT):
        used = await connect(ours, PeerInfo(theirs.get_id(), [stale, new]), TIMEOUT)
    assert used == new
    assert stored(ours, theirs)[0] == str(new)


@pytest.mark.trio
async def test_a_provider_that_moved_is_reached_at_the_address_learnt_since(
    hosts: tuple[IHost, IHost],
) -> None:
    """A resumed download dials its ticket's stale address; the provider's new one came
    from a DHT record (the facade puts it in the peerstore) and must be tried too
    (field test #27)."""
    ours, theirs = hosts
    stale = closed_port_addr()
    await forget_after_failure(ours, theirs, stale)
    ours.get_peerstore().add_addrs(theirs.get_id(), theirs.get_transport_addrs(), 3600)
    with trio.fail_after(TIMEOUT):
        stream = await open_stream(
            ours, theirs.get_id().to_base58(), [str(stale)], PING_PROTOCOL, TIMEOUT
        )
    await stream.reset()
    # Identify may have stored it again since, with the peer's ID appended.
    first = without_peer_id(ours.get_peerstore().addrs(theirs.get_id())[0])
    assert first == theirs.get_transport_addrs()[0]


@pytest.mark.trio
async def test_connect_to_a_connected_peer_at_a_wrong_address_fails_and_keeps_the_connection(
    hosts: tuple[IHost, IHost],
) -> None:
    ours, theirs = hosts
    good = theirs.get_transport_addrs()[0]
    await connect_exactly(ours, theirs.get_id(), good, TIMEOUT)
    wrong = closed_port_addr()
    with pytest.raises(UserError) as caught:
        await connect_exactly(ours, theirs.get_id(), wrong, TIMEOUT)
    message = str(caught.value)
    assert message.startswith(f"could not connect to {theirs.get_id()} at {wrong}: ")
    assert message.endswith("; the existing connection to it is still up")
    assert "\n" not in message
    assert theirs.get_id() in ours.get_connected_peers()
    assert str(wrong) not in stored(ours, theirs)


@pytest.mark.trio
async def test_connect_to_a_connected_peer_dials_the_address_given(
    hosts: tuple[IHost, IHost],
) -> None:
    ours, theirs = hosts
    async with AsyncExitStack() as stack:
        impostor = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
        await connect_exactly(ours, theirs.get_id(), theirs.get_transport_addrs()[0], TIMEOUT)
        # Another node answers there: Noise proves it is not the peer named.
        with pytest.raises(UserError, match="another node answers at that address; the existing"):
            await connect_exactly(ours, theirs.get_id(), impostor.get_transport_addrs()[0], TIMEOUT)
    assert theirs.get_id() in ours.get_connected_peers()


@pytest.mark.parametrize(
    "addr",
    ["/ip4/127.0.0.1/udp/4001/quic-v1", "/ip4/127.0.0.1/udp/4001/quic", "/ip4/127.0.0.1/tcp/1/ws"],
)
@pytest.mark.trio
async def test_unsupported_transports_are_refused_before_dialing(
    hosts: tuple[IHost, IHost], addr: str
) -> None:
    ours, theirs = hosts
    with pytest.raises(UserError, match="speaks only TCP"):
        await connect_exactly(ours, theirs.get_id(), Multiaddr(addr), TIMEOUT)


@pytest.mark.trio
async def test_on_connected_reports_inbound_connections(hosts: tuple[IHost, IHost]) -> None:
    """How a resumed download hears that its provider came back (it dials us)."""
    ours, theirs = hosts
    arrived: list[str] = []
    seen = trio.Event()

    def record(peer: str) -> None:
        arrived.append(peer)
        seen.set()

    on_connected(ours, record)
    await connect(theirs, PeerInfo(ours.get_id(), ours.get_transport_addrs()), TIMEOUT)
    with trio.fail_after(TIMEOUT):
        await seen.wait()
    assert arrived == [theirs.get_id().to_base58()]


@pytest.mark.trio
async def test_connected_peers_lists_an_address_once_with_or_without_its_peer_id(
    hosts: tuple[IHost, IHost],
) -> None:
    ours, theirs = hosts
    addr = theirs.get_addrs()[0]
    with trio.fail_after(TIMEOUT):
        await connect(ours, PeerInfo(theirs.get_id(), [addr]), TIMEOUT)
    bare = Multiaddr(str(addr).split("/p2p/")[0])
    ours.get_peerstore().add_addrs(theirs.get_id(), [bare, addr], ADDR_TTL)
    [listed] = connected_peers(ours)
    assert listed.addrs == (str(bare),)


@pytest.mark.trio
async def test_a_stream_to_a_peer_whose_connection_is_closing_dials_a_new_connection(
    hosts: tuple[IHost, IHost],
) -> None:
    """py-libp2p marks a connection closed at once but drops it from the swarm only
    after its muxer has closed; a stream opened in between failed with "No valid
    connections available" instead of dialing (a compute job failed that way)."""
    ours, theirs = hosts
    await connect(ours, PeerInfo(theirs.get_id(), theirs.get_transport_addrs()), TIMEOUT)
    (closing,) = ours.get_network().get_connections(theirs.get_id())
    closing.event_closed.set()  # type: ignore[attr-defined]
    with trio.fail_after(TIMEOUT):
        stream = await open_stream(ours, theirs.get_id().to_base58(), [], PING_PROTOCOL, TIMEOUT)
    await stream.reset()
    live = [c for c in ours.get_network().get_connections(theirs.get_id()) if not c.is_closed]
    assert len(live) == 1


def _port(host: IHost) -> int:
    return int(str(host.get_transport_addrs()[0]).split("/")[4])


@pytest.mark.trio
@pytest.mark.parametrize("protocol", ["dns4", "dns"])
async def test_a_dns_address_is_resolved_before_it_is_dialed(
    hosts: tuple[IHost, IHost], protocol: str
) -> None:
    """py-libp2p 0.8.1 dials a /dns4 name unresolved and fails ("IP address not found in
    multiaddr"); ``localhost`` comes from /etc/hosts, as for any program."""
    ours, theirs = hosts
    named = Multiaddr(f"/{protocol}/localhost/tcp/{_port(theirs)}")
    with trio.fail_after(TIMEOUT):
        await connect_exactly(ours, theirs.get_id(), named, TIMEOUT)
    assert theirs.get_id() in ours.get_connected_peers()
    assert stored(ours, theirs)[0] == str(named), "the name is kept, to be resolved again"
    await ours.disconnect(theirs.get_id())
    with trio.fail_after(TIMEOUT):
        assert await connect(ours, PeerInfo(theirs.get_id(), [named]), TIMEOUT) == named


@pytest.mark.trio
async def test_a_name_that_does_not_resolve_is_one_sentence(hosts: tuple[IHost, IHost]) -> None:
    """Answered by a resolver of the test's own: no outside name is looked up."""

    class NoSuchName(trio.abc.HostnameResolver):
        async def getaddrinfo(self, *_args: object) -> list[Any]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        async def getnameinfo(self, *_args: object) -> tuple[str, str]:
            raise NotImplementedError

    ours, theirs = hosts
    named = Multiaddr(f"/dns4/nowhere.example/tcp/{_port(theirs)}")
    previous = trio.socket.set_custom_hostname_resolver(NoSuchName())
    try:
        with pytest.raises(
            UserError, match=r"^could not resolve nowhere\.example: Name or service not known$"
        ):
            await connect_exactly(ours, theirs.get_id(), named, TIMEOUT)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert ours.get_connected_peers() == []


@pytest.mark.trio
@pytest.mark.parametrize("wildcard", ["/ip4/0.0.0.0", "/ip6/::"])
async def test_an_unspecified_address_is_refused_and_never_dialed_or_learnt(
    hosts: tuple[IHost, IHost], wildcard: str
) -> None:
    """Dialing 0.0.0.0 reaches this machine: it 'worked' between two local nodes, and
    the address then spread to peers that reached themselves with it."""
    ours, theirs = hosts
    addr = Multiaddr(f"{wildcard}/tcp/{_port(theirs)}")
    with pytest.raises(UserError, match="is the unspecified address, which names no node"):
        await connect_exactly(ours, theirs.get_id(), addr, TIMEOUT)
    assert theirs.get_id() not in ours.get_connected_peers()
    # Identify, DHT answers and tickets all add addresses through the peer store.
    ours.get_peerstore().add_addrs(theirs.get_id(), [addr, *theirs.get_transport_addrs()], 60)
    assert stored(ours, theirs) == [str(a) for a in theirs.get_transport_addrs()]
    ours.get_peerstore().clear_addrs(theirs.get_id())
    with pytest.raises(UserError, match="no address to dial"):
        await connect(ours, PeerInfo(theirs.get_id(), [addr]), TIMEOUT)
    assert theirs.get_id() not in ours.get_connected_peers()


@pytest.mark.trio
async def test_this_nodes_own_address_or_peer_id_is_never_dialed(
    hosts: tuple[IHost, IHost],
) -> None:
    """A record or bootstrap entry naming another peer at this node's own address (a
    stale record, a copied config) dialed this node itself."""
    ours, theirs = hosts
    own_addr = ours.get_transport_addrs()[0]
    with pytest.raises(UserError, match=f"^{own_addr} is this node's own address$"):
        await connect_exactly(ours, theirs.get_id(), own_addr, TIMEOUT)
    named = Multiaddr(f"/dns4/localhost/tcp/{_port(ours)}")
    with pytest.raises(UserError, match=r"/dns4/localhost/.* is this node's own address"):
        await connect_exactly(ours, theirs.get_id(), named, TIMEOUT)
    with pytest.raises(UserError, match="no address to dial"):
        await connect(ours, PeerInfo(theirs.get_id(), [own_addr]), TIMEOUT)
    with pytest.raises(UserError, match="is this node's own peer ID; connect to another node"):
        await connect_exactly(ours, ours.get_id(), theirs.get_transport_addrs()[0], TIMEOUT)
    assert ours.get_connected_peers() == []
    # Among other addresses, the own one is skipped and the peer's is dialed.
    with trio.fail_after(TIMEOUT):
        got = await connect(
            ours, PeerInfo(theirs.get_id(), [own_addr, *theirs.get_transport_addrs()]), TIMEOUT
        )
    assert got == theirs.get_transport_addrs()[0]


@pytest.mark.trio
async def test_a_wildcard_listener_owns_every_interface_and_loopback_address() -> None:
    async with AsyncExitStack() as stack:
        ours = await stack.enter_async_context(
            running_host(NodeKey.generate(), ["/ip4/0.0.0.0/tcp/0"])
        )
        port = _port(ours)
        for ip in ["127.0.0.1", "127.0.0.2", *(i for i in interface_ips() if "." in i)]:
            assert is_own(ours, Multiaddr(f"/ip4/{ip}/tcp/{port}")), ip
        assert not is_own(ours, Multiaddr(f"/ip4/127.0.0.1/tcp/{port % 65535 + 1}"))
        assert not is_own(ours, Multiaddr(f"/ip6/::1/tcp/{port}"))
        assert not is_own(ours, Multiaddr(f"/ip4/192.0.2.1/tcp/{port}"))
