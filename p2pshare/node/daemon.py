"""``p2pshare daemon``: start every service of a node and stop them cleanly."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pshare import __version__
from p2pshare.config import Config, load_config
from p2pshare.control.server import ControlServer, Emit, Handler
from p2pshare.errors import UserError
from p2pshare.home import MAX_SOCKET_PATH
from p2pshare.identity import NodeKey
from p2pshare.net.datachannel import DataChannelSetupError
from p2pshare.net.listen import ListenError, check_can_listen
from p2pshare.net.network import running_network
from p2pshare.net.portmap import (
    DATA,
    LIBP2P,
    PortMapping,
    mappers,
    not_asked_status,
    off_status,
    unmappable,
)
from p2pshare.node import logs
from p2pshare.node.compute_api import ComputeApi
from p2pshare.node.discovery import Discovery
from p2pshare.node.init import initialise
from p2pshare.node.lock import HomeLock
from p2pshare.node.metrics_api import MetricsApi
from p2pshare.node.network_api import NetworkApi
from p2pshare.node.shares_api import SharesApi, checked_shares
from p2pshare.node.transfer_api import TransferApi
from p2pshare.proto.listen import ListenAddr, is_loopback, parse_host_port, parse_listen_addr
from p2pshare.store.catalog import Catalog
from p2pshare.store.guard import HomeGuard
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.outpath import HomeFence
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.uploader import UploadLimiter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from p2pshare.compute.service import ComputeService
    from p2pshare.config import NetworkConfig
    from p2pshare.home import Home
    from p2pshare.net.network import Network
    from p2pshare.net.reachability import Reachability
    from p2pshare.net.relay import Relays

log = logging.getLogger(__name__)


@dataclass
class Node:
    """What the control handlers of a running daemon can see."""

    home: Home
    key: NodeKey
    net: Network
    network: NetworkApi
    compute: ComputeService | None = None
    # Reachability and relay fields of `status` (p2pshare.net.reachability, .relay).
    nat_status: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stop_requested: trio.Event = field(default_factory=trio.Event)

    def listen_addrs(self) -> list[str]:
        """The announced addresses (p2pshare.net.addrs), as identify sends them."""
        return self.net.listen_addrs()

    async def rpc_id(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        return {"peer_id": self.key.peer_id, "addrs": self.listen_addrs()}

    async def rpc_status(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        status = {
            "version": __version__,
            "peer_id": self.key.peer_id,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "peers": self.net.peer_count(),
            "home": str(self.home.root),
            "compute": None if self.compute is None else self.compute.status(),
        } | await self.network.status()
        for part in self.nat_status:
            status |= part()
        return status

    async def rpc_stop(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        log.info("stop requested over the control socket")
        self.stop_requested.set()
        return {"stopping": True}

    def handlers(self) -> dict[str, Handler]:
        return {"id": self.rpc_id, "status": self.rpc_status, "stop": self.rpc_stop}


@dataclass(frozen=True)
class ReadyInfo:
    """What the daemon's ready line says; each address with ``/p2p/<peer ID>``."""

    peer_id: str
    # What it announces (`id`, identify, tickets): the two below, or [network] announce.
    addrs: list[str]
    # Where its sockets listen.
    listening: list[str]
    # What the router maps to it ([network] port_mapping), if mapped by then.
    mapped: list[str]
    socket_path: str

    @classmethod
    def of(cls, net: Network, socket_path: str) -> ReadyInfo:
        mapped = [f"{addr}/p2p/{net.peer_id}" for addr in net.mapped.announced()]
        return cls(net.peer_id, net.listen_addrs(), net.bound_addrs(), mapped, socket_path)


async def _stop_on_signal(node: Node, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        node.stop_requested.set()
        return


async def _start_data_channel(
    nursery: trio.Nursery,
    network: Network,
    listen: ListenAddr,
    port: int,
    transfer: TransferApi,
    where: str,
    reach: Reachability,
    portmap: PortMapping | None,
) -> int | None:
    """Offer the encrypted data channel on the IP of the first listen address; its port.

    A node that cannot listen on a free port there still works: peers fall back to
    libp2p streams.  A port fixed by config that cannot be bound is an error, as a
    listen address is: it is forwarded or announced, and another process holds it.
    """
    if port:
        check_can_listen(ListenAddr(f"{listen.host} port {port}", listen.host, port), where)
    server = network.data_channel_server(
        listen.host,
        port,
        transfer.serve_data_channel,
        refuse=reach.data_channel_refusal,
        offer_port=portmap.offer_port if portmap is not None else lambda _stream, port: port,
    )
    try:
        started: int = await nursery.start(server.run)
    except DataChannelSetupError as exc:
        log.warning("no data channel: %s; peers will use libp2p streams", exc)
        return None
    return started


@dataclass
class _Services:
    """The background services of a node that ``_start_services`` runs."""

    relays: Relays
    reach: Reachability
    transfer: TransferApi
    discovery: Discovery
    compute: ComputeApi
    metrics: MetricsApi
    portmap: PortMapping | None


def _assemble(
    home: Home,
    key: NodeKey,
    config: Config,
    catalog: Catalog,
    network: Network,
    upload_rate: int | None,
    user_umask: int,
) -> tuple[Node, ControlServer, Callable[[trio.Nursery], Awaitable[None]]]:
    """Build every service of the node; return the node, its control server, and a
    function that starts the background services in a nursery."""
    net = config.network
    store = ShareStore(catalog, home.content_dir, key, config.store.chunk_size, HomeGuard.of(home))
    # We hold the home's lock and share nothing yet: every staging directory is stale.
    store.staging.sweep(any_process=True)
    shares_now = functools.partial(checked_shares, store)
    discovery = Discovery(network, catalog, net, shares=shares_now)
    metrics = MetricsApi(network.peer_count, network.connection_count)
    network_api = NetworkApi(discovery, catalog, shares_now, metrics)
    node = Node(home, key, network, network_api)
    relays = network.relays(net)
    forwarded = bool(net.announce and config.transfer.data_port)
    reach = network.reachability(net.announce, data_port_forwarded=forwarded)
    portmap, portmap_status = _port_mapping(net, network)
    node.nat_status = [reach.status, relays.status, portmap_status]
    network.mapped.on_change(discovery.addresses_changed)
    transfer = _transfer_api(home, config, network, store, discovery, upload_rate, user_umask)
    shares = SharesApi(
        store,
        key.peer_id,
        discovery.announce,
        config.store.quota_bytes,
        discovery.announce_new,
    )
    compute = _compute_api(home, key, config, network, store, discovery, transfer)
    node.compute = compute.service
    server = ControlServer(
        node.handlers()
        | shares.handlers()
        | network_api.handlers()
        | transfer.handlers()
        | compute.handlers()
        | metrics.handlers(),
        log_hint=str(home.log_path),
    )
    services = _Services(relays, reach, transfer, discovery, compute, metrics, portmap)
    return node, server, functools.partial(_start_services, home, config, network, services)


def _port_mapping(
    net: NetworkConfig, network: Network
) -> tuple[PortMapping | None, Callable[[], dict[str, Any]]]:
    """The router mappings ``[network] port_mapping`` asks for, if any; its ``status``."""
    if net.port_mapping == "off":
        return None, off_status
    reason = unmappable([parse_listen_addr(text) for text in net.listen])
    if reason is not None:
        log.warning(
            "[network] port_mapping = %r: the router is not asked: %s", net.port_mapping, reason
        )
        return None, functools.partial(not_asked_status, net.port_mapping, reason)
    candidates = mappers(net.port_mapping, net.natpmp_gateway, net.upnp_root_url)
    portmap = PortMapping(net.port_mapping, candidates, network.mapped)
    return portmap, portmap.status


def _transfer_api(
    home: Home,
    config: Config,
    network: Network,
    store: ShareStore,
    discovery: Discovery,
    upload_rate: int | None,
    user_umask: int,
) -> TransferApi:
    rate = config.transfer.upload_rate if upload_rate is None else upload_rate
    transfer = TransferApi(
        network,
        store,
        LocalContent(store),
        discovery,
        UploadLimiter(rate),
        user_umask,
        config.store.quota_bytes,
        # No download the user asks for is written inside the home.
        HomeFence.of(home.root),
    )
    transfer.register()
    return transfer


def _compute_api(
    home: Home,
    key: NodeKey,
    config: Config,
    network: Network,
    store: ShareStore,
    discovery: Discovery,
    transfer: TransferApi,
) -> ComputeApi:
    # Worker processes start only when [compute] enabled is true, or once
    # `compute offer --on` makes it so.
    compute = ComputeApi(
        network,
        store,
        discovery,
        transfer,
        key,
        config.compute,
        home.compute_dir,
        config.store.quota_bytes,
        config.network.reprovide_interval,
    )
    compute.register()
    return compute


async def _start_services(
    home: Home, config: Config, network: Network, s: _Services, nursery: trio.Nursery
) -> None:
    net = config.network
    # Before discovery, so the first announcement carries the relay circuits.
    await nursery.start(s.relays.run)
    await nursery.start(s.reach.run)
    data_port = None
    data_listen = parse_listen_addr(net.listen[0])
    if config.transfer.data_channel:
        if net.announce and not config.transfer.data_port:
            # An announced address usually means a NAT that forwards fixed ports.
            log.warning(
                "[network] announce is set but [transfer] data_port is 0: the data"
                " channel port changes at every start and cannot be forwarded; set"
                " data_port and forward it, or peers behind other networks use the"
                " slower libp2p stream"
            )
        data_port = await _start_data_channel(
            nursery,
            network,
            data_listen,
            config.transfer.data_port,
            s.transfer,
            f"[transfer] data_port in {home.config_path}",
            s.reach,
            s.portmap,
        )
    libp2p_port = network.tcp_port()
    if s.portmap is not None and libp2p_port is not None:
        # Starts at once and maps in the background: a silent router delays nothing.
        # The data channel listens on the first listen address alone: on loopback, no
        # router can forward to it.
        mappable = data_port and not is_loopback(data_listen)
        ports = {LIBP2P: libp2p_port} | ({DATA: data_port} if mappable else {})
        await nursery.start(s.portmap.run, ports)
    await nursery.start(s.discovery.run)
    # Before the control socket opens, so a get can attach to a resumed download.
    await nursery.start(s.transfer.downloads.run)
    await nursery.start(s.compute.service.run)
    nursery.start_soon(s.compute.outputs.sweep)
    if config.metrics.listen:
        # Checked by _check_metrics_listen before the node joined the network.
        await nursery.start(s.metrics.export, parse_host_port(config.metrics.listen))


def _check_metrics_listen(home: Home, config: Config) -> None:
    """Refuse a ``[metrics] listen`` address that cannot be bound, before the node
    joins the network: peers must not see a node that then exits at once.

    The node's own ports are free until it starts, so those are compared by value."""
    where = f"[metrics] listen in {home.config_path}"
    addr = parse_host_port(config.metrics.listen)
    own = [(parse_listen_addr(text), f"[network] listen {text}") for text in config.network.listen]
    if config.transfer.data_port:
        data = parse_listen_addr(config.network.listen[0])
        own.append((ListenAddr("", data.host, config.transfer.data_port), "[transfer] data_port"))
    for listen, key in own:
        if listen.port == addr.port and (
            listen.host == addr.host or _unspecified(listen.host) or _unspecified(addr.host)
        ):
            raise ListenError(
                addr.text,
                f"the port is this node's own listen port ({key}); choose another port",
                where,
            )
    check_can_listen(addr, where)


def _unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def _prepare_home(home: Home) -> None:
    """Refuse a home whose socket path is too long; initialise a new one."""
    if len(str(home.socket_path).encode()) > MAX_SOCKET_PATH:
        raise UserError(
            f"the home path {home.root} is too long for a unix socket; choose a shorter --home"
        )
    if not home.key_path.exists():
        result = initialise(home)
        log.info("initialised a new node %s in %s", result.peer_id, home.root)
    home.check_private()


async def _run_node(
    home: Home,
    node: Node,
    server: ControlServer,
    start_services: Callable[[trio.Nursery], Awaitable[None]],
    signals: AsyncIterator[int],
    on_ready: Callable[[ReadyInfo], None],
) -> None:
    """Start the services and the control socket; run until a stop is requested."""
    sock = await ControlServer.bind(home.socket_path)
    async with trio.open_nursery() as nursery:
        await start_services(nursery)
        await nursery.start(server.serve, sock)
        nursery.start_soon(_stop_on_signal, node, signals)
        nursery.start_soon(logs.flush_summaries)
        ready = ReadyInfo.of(node.net, str(home.socket_path))
        log.info(
            "node %s listening on %s; announced at %s",
            ready.peer_id,
            ", ".join(ready.listening),
            ", ".join(ready.addrs),
        )
        on_ready(ready)
        await node.stop_requested.wait()
        server.hold_connections()
        nursery.cancel_scope.cancel()


async def serve(
    home: Home,
    on_ready: Callable[[ReadyInfo], None],
    upload_rate: int | None,
    user_umask: int,
) -> None:
    """Run the node until SIGINT, SIGTERM or a ``stop`` request.

    ``upload_rate`` (bytes/s, 0 = unlimited) overrides ``[transfer] upload_rate``.
    ``user_umask`` is the umask the daemon was started with, before it made its own
    private: what a client that sends none (an older one) gets its files made with.
    """
    _prepare_home(home)
    lock = HomeLock(home.lock_path, home.command("stop"))
    lock.acquire()
    server: ControlServer | None = None
    catalog: Catalog | None = None
    try:
        config = load_config(home.config_path)
        if config.metrics.listen:
            _check_metrics_listen(home, config)
        key = NodeKey.load(home.key_path)
        catalog = Catalog(home.catalog_path)
        # We hold the lock, so any socket file left here belongs to a dead daemon.
        home.socket_path.unlink(missing_ok=True)
        # Installed before we announce readiness, so no SIGTERM meets the default handler.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            net = config.network
            async with running_network(
                key,
                net.listen,
                max_connections=net.max_connections,
                announce=net.announce,
                where=f"[network] listen in {home.config_path}",
                streams_per_peer=net.streams_per_peer,
                dht_requests_per_second=net.dht_requests_per_second,
            ) as network:
                node, server, start_services = _assemble(
                    home, key, config, catalog, network, upload_rate, user_umask
                )
                await _run_node(home, node, server, start_services, signals, on_ready)
    finally:
        with contextlib.suppress(FileNotFoundError):
            home.socket_path.unlink()
        if catalog is not None:
            catalog.close()
        lock.release()
        if server is not None:
            server.close_connections()
    log.info("daemon stopped")
