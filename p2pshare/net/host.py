"""The libp2p host: our node key, TCP + Noise + Yamux and nothing else.

py-libp2p 0.8.1 offers plaintext, secio and TLS next to Noise by default, so a
dialer could negotiate an unencrypted connection, and mplex next to Yamux; we pass
the security and muxer options explicitly.  ``max_connections_per_peer=1`` also
removes the 250 ms happy-eyeballs wait on every dial (measured in
../shared/notes/py-libp2p-0.8.1.md).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.peerstore import PeerStore
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pshare.net.addrs import Recent, addrs_factory, is_wildcard
from p2pshare.net.listen import ListenError, check_can_listen, parse_listen_addrs
from p2pshare.net.multiselect import PipelinedMultiselectClient, ReadFirstMultiselect
from p2pshare.net.muxer import use_atomic_frames

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from libp2p.abc import IHost
    from libp2p.host.basic_host import BasicHost
    from libp2p.peer.id import ID

    from p2pshare.identity import NodeKey
    from p2pshare.net.mapped import MappedAddrs
    from p2pshare.proto.listen import ListenAddr


async def _close(host: IHost) -> None:
    """Shut every connection down before leaving host.run().

    Leaving host.run() alone cancels the connection tasks but leaves their sockets to
    the garbage collector. Closing one by one costs 0.2 s each (yamux sleeps on close),
    so peers are disconnected concurrently first.
    """
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            for peer in host.get_connected_peers():
                nursery.start_soon(host.disconnect, peer)
    with trio.move_on_after(5):
        await host.close()


class _PeerStore(PeerStore):
    """py-libp2p's peer store, which never learns an unspecified address (0.0.0.0, ::).

    Peers running older versions (or other implementations) announce their wildcard
    listen address through identify and in DHT records; dialing it reaches this
    machine, i.e. mostly this node itself (field test #6). Every way an address is
    learnt (identify, DHT answers, tickets, dials) goes through ``add_addrs``.
    """

    def add_addrs(self, peer_id: ID, addrs: Sequence[multiaddr.Multiaddr], ttl: int = 0) -> None:
        usable = [a for a in addrs if not is_wildcard(a)]
        if usable or not addrs:
            super().add_addrs(peer_id, usable, ttl)


def build_host(
    key: NodeKey,
    *,
    max_connections: int = 300,
    announce: Sequence[str] = (),
    mapped: MappedAddrs | None = None,
) -> IHost:
    """A host keyed by ``key`` that speaks only Noise and Yamux.

    Its ``get_addrs()`` (identify, ``p2pshare id``) are the addresses of
    p2pshare.net.addrs.announced: ``announce`` if given, never 0.0.0.0; then the
    router-mapped addresses in ``mapped`` that AutoNAT has not refuted.

    py-libp2p's own mDNS stays off: it advertises 0.0.0.0 and loses peers found
    before a handler is registered; ``[network] mdns`` is p2pshare.net.mdns, run
    from Discovery.
    """
    use_atomic_frames()
    key_pair = create_new_key_pair(key.seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        # Not create_yamux_muxer_option(): it adds mplex as a fallback, which a peer
        # could then select.
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=connection_config(max_connections),
        enable_mDNS=False,
        addrs_factory=addrs_factory(announce, mapped=mapped),
        peerstore_opt=_PeerStore(),
    )
    # py-libp2p builds the list afresh at every call and offers no hook to keep it;
    # it changes when a listener starts, the mapped addresses change, or within
    # Recent's max age (interfaces, confirmed observed addresses).
    network = host.get_network()
    addrs = Recent(host.get_addrs, version=lambda: len(network.listeners))
    if mapped is not None:
        mapped.on_change(addrs.forget)
    host.get_addrs = addrs  # type: ignore[method-assign]
    basic = cast("BasicHost", host)
    basic.multiselect_client = PipelinedMultiselectClient()
    # The same handler table: handlers py-libp2p registered already stay served.
    basic.multiselect = ReadFirstMultiselect(basic.multiselect.handlers)
    return host


def connection_config(max_connections: int) -> ConnectionConfig:
    """py-libp2p's connection limits for ``[network] max_connections``.

    Its defaults prune connections above 300 and refuse a ``max_connections`` below
    that (a ValueError at start); its watermarks only matter to the auto-connector
    (stopped: see running_host) and the pruner, so they follow the cap.
    """
    defaults = ConnectionConfig()
    low = min(defaults.low_watermark, max_connections)
    return ConnectionConfig(
        max_connections_per_peer=1,
        max_connections=max_connections,
        high_watermark=max_connections,
        low_watermark=low,
        min_connections=min(defaults.min_connections, low),
    )


async def _listen(network: Swarm, addr: ListenAddr, where: str) -> ListenError | None:
    """Listen on ``addr``, or say why not.

    The exclusive bind of check_can_listen is released just before py-libp2p binds
    with SO_REUSEPORT, with no wait in between, so another node can take the same
    port only in those few milliseconds.  host.run() ignores whether listening
    worked, hence one address at a time and the result checked.
    """
    try:
        check_can_listen(addr, where)
    except ListenError as exc:
        return exc
    if not await network.listen(multiaddr.Multiaddr(addr.text)):
        return ListenError(addr.text, "py-libp2p could not listen (the log may say why)", where)
    return None


@asynccontextmanager
async def running_host(
    key: NodeKey,
    listen: Sequence[str],
    *,
    max_connections: int = 300,
    announce: Sequence[str] = (),
    where: str = "[network] listen",
    mapped: MappedAddrs | None = None,
) -> AsyncIterator[IHost]:
    """Start the host listening on every address of ``listen``; stop it on exit.

    An address that cannot be bound is a ListenError naming it and ``where`` it was
    configured: the host listens on all of them or does not start.
    """
    addrs = parse_listen_addrs(list(listen), where)
    host = build_host(key, max_connections=max_connections, announce=announce, mapped=mapped)
    network = host.get_network()
    assert isinstance(network, Swarm)
    error: ListenError | None = None
    async with host.run([]):
        for addr in addrs:
            error = await _listen(network, addr, where)
            if error is not None:
                break
        else:
            # The auto-connector dials every peer the peerstore knows until it has 200
            # connections; discovery decides whom we dial.
            await network.auto_connector.stop()
            try:
                yield host
            finally:
                with trio.CancelScope(shield=True):
                    await _close(host)
    # Raised outside host.run(), whose nurseries would wrap it in an ExceptionGroup.
    if error is not None:
        raise error
