"""Is this node reachable from the internet? AutoNAT v1, with py-libp2p's server fixed.

A node asks the peers it is connected to (AutoNAT servers) to dial it back at its
candidate public addresses: ``[network] announce``, public listen addresses, and the
IPs its peers observe it at combined with its listen ports (a NAT that keeps ports
maps those, which is also what DCUtR relies on). Any successful dial-back proves the
node ``public`` and names the address; only failed dial-backs make it ``private``;
refusals or no servers leave it ``unknown``.

py-libp2p 0.8.1's AutoNAT server "dials back" with ``host.connect``, which returns the
connection the request came in on: it answers OK for any address, reachable or not
(tests/net/test_reachability.py shows it). :class:`DialBackServer` dials a new
connection and proves the peer's identity on it (Noise) before it answers OK. Its
client side needs four servers to agree before it says anything; a small network has
fewer, so :func:`verdict` decides from what the servers answered.

Each address a router maps to this node (p2pshare.net.mapped) is also asked about on
its own, so that a dial-back failing there refutes it (it is then no longer announced)
and one succeeding confirms it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

import ifaddr
import multiaddr
import trio
from libp2p.host.autonat import AutoNATService
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.autonat.pb.autonat_pb2 import Message

from p2pshare.net.relay import connection_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from libp2p.abc import IHost
    from libp2p.host.basic_host import BasicHost
    from libp2p.peer.id import ID

    from p2pshare.net.mapped import MappedAddrs
    from p2pshare.net.streams import HandlerGuard, LibP2PStream

log = logging.getLogger(__name__)

PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"
# One dial-back: a reachable TCP port answers within a round trip; a NAT drops the SYN.
DIAL_BACK_TIMEOUT = 5.0
# Dial-backs this node makes for others at once; more requests wait.
DIAL_BACKS_AT_ONCE = 4
QUERY_TIMEOUT = 3 * DIAL_BACK_TIMEOUT
MAX_SERVERS = 4
FIRST_CHECK_AFTER = 2.0
RETRY_UNKNOWN_AFTER = 15.0
RECHECK_AFTER = 600.0


def verdict(statuses: Sequence[int]) -> str:
    """The reachability that AutoNAT answers (``Message.ResponseStatus`` values) prove."""
    if any(s == Message.OK for s in statuses):
        return PUBLIC
    if any(s == Message.E_DIAL_ERROR for s in statuses):
        return PRIVATE
    return UNKNOWN


def _is_public_ip(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def candidate_addrs(
    listen: Sequence[str], observed_ips: Sequence[str], announce: Sequence[str]
) -> list[str]:
    """The addresses worth a dial-back: announced ones, public listen addresses, and
    each observed IP with each TCP listen port."""
    found = [a for a in announce if a.startswith("/ip4/")]
    ports = []
    for addr in listen:
        parts = addr.split("/")
        if len(parts) >= 5 and parts[1] == "ip4" and parts[3] == "tcp":
            ports.append(parts[4])
            if _is_public_ip(parts[2]):
                found.append(f"/ip4/{parts[2]}/tcp/{parts[4]}")
    found += [f"/ip4/{ip}/tcp/{port}" for ip in observed_ips for port in ports]
    return list(dict.fromkeys(found))


def local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of this machine's interfaces: peers there reach us without NAT."""
    networks = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            with contextlib.suppress(ValueError):
                networks.append(
                    ipaddress.ip_network(f"{address}/{ip.network_prefix}", strict=False)
                )
    return networks


def data_channel_refusal(
    path: str | None,
    remote_ip: str | None,
    reachability: str,
    *,
    forwarded: bool,
    local: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str | None:
    """Why not to offer the data channel (a separate TCP port) on a connection, or None.

    Through a relay the port is never reachable; to a peer outside the local networks
    (``local``) of a node behind NAT it is not either, even on a hole-punched
    connection, unless the user forwarded it (``forwarded``). Refusing at once saves
    the peer the data-channel dial's timeout.
    """
    if path == "relayed":
        return "the connection is relayed: the data channel port is not reachable"
    try:
        ip = ipaddress.ip_address(remote_ip) if remote_ip else None
    except ValueError:
        ip = None
    outside = ip is not None and not any(ip in network for network in local)
    if reachability == PRIVATE and outside and not forwarded:
        return "this node is behind NAT: its data channel port is not reachable from outside"
    return None


async def dial_back(host: IHost, peer: ID, addr: multiaddr.Multiaddr) -> bool:
    """Whether a new connection to ``addr`` reaches ``peer`` (its Noise key proves it)."""
    swarm: Any = host.get_network()
    transport = swarm.transport_manager.transport_for_dialing(addr)
    if transport is None:
        return False
    with trio.move_on_after(DIAL_BACK_TIMEOUT):
        try:
            raw = await transport.dial(addr)
        except Exception:  # noqa: BLE001 - unreachable is the answer, not an error
            return False
        try:
            secured = await swarm.upgrader.upgrade_security(raw, is_initiator=True, peer_id=peer)
            await secured.close()
            return True
        except Exception:  # noqa: BLE001 - someone else, or nobody, answered there
            return False
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await raw.close()
    return False


class DialBackServer(AutoNATService):
    """py-libp2p's AutoNAT server, dialing back on a new connection."""

    def __init__(self, host: BasicHost, guard: HandlerGuard) -> None:
        super().__init__(host, serve=False)
        self._limiter = trio.CapacityLimiter(DIAL_BACKS_AT_ONCE)
        host.set_stream_handler(AUTONAT_PROTOCOL_ID, self.handle_stream)
        guard.adopt(str(AUTONAT_PROTOCOL_ID), bounded=True)

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        async with self._limiter:
            for raw in addrs:
                if await dial_back(self.host, peer_id, multiaddr.Multiaddr(raw)):
                    return raw
        return None


class Reachability:
    """This node's reachability, checked at start and every ``RECHECK_AFTER`` s."""

    def __init__(
        self,
        host: IHost,
        guard: HandlerGuard,
        announce: Sequence[str],
        *,
        data_port_forwarded: bool = False,
        mapped: MappedAddrs | None = None,
    ) -> None:
        self._host = host
        self._announce = list(announce)
        self._forwarded = data_port_forwarded
        self._mapped = mapped
        self._server = DialBackServer(host, guard)  # type: ignore[arg-type]
        self.state = UNKNOWN
        self.confirmed: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(FIRST_CHECK_AFTER)
        while True:
            await self.check()
            await trio.sleep(RETRY_UNKNOWN_AFTER if self.state == UNKNOWN else RECHECK_AFTER)

    def _servers(self) -> list[ID]:
        peerstore = self._host.get_peerstore()
        servers = []
        for peer in self._host.get_connected_peers():
            try:
                speaks = peerstore.supports_protocols(peer, [AUTONAT_PROTOCOL_ID])
            except Exception:  # noqa: BLE001, S112 - a peer identify has not described yet
                continue
            # Servers refuse requests over relayed connections.
            if speaks and connection_path(self._host, peer) == "direct":
                servers.append(peer)
        return servers[:MAX_SERVERS]

    def _observed_ips(self) -> list[str]:
        manager = getattr(self._host, "_observed_addr_manager", None)
        if manager is None:
            return []
        ips = []
        for addr in manager.addrs(min_observers=1):
            parts = str(addr).split("/")
            if len(parts) > 2 and parts[1] == "ip4" and "/p2p-circuit" not in str(addr):
                ips.append(parts[2])
        return ips

    async def check(self) -> None:
        listen = [str(a) for a in self._host.get_transport_addrs()]
        mapped = self._mapped.all() if self._mapped is not None else []
        candidates = candidate_addrs(listen, self._observed_ips(), [*self._announce, *mapped])
        servers = self._servers()
        if not candidates or not servers:
            return
        statuses: list[int] = []
        confirmed: set[str] = set()
        # mapped address -> the servers' answers about it alone
        judged: dict[str, list[int]] = {addr: [] for addr in mapped}

        async def ask(server: ID, addrs: Sequence[str], answers: list[int]) -> None:
            wanted = [multiaddr.Multiaddr(a).to_bytes() for a in addrs]
            try:
                status, addr = await self._server.query_server(server, wanted, QUERY_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - a server that fails has no opinion
                log.debug("AutoNAT query to %s failed: %s", server, exc)
                return
            answers.append(status)
            if status == Message.OK and addr:
                confirmed.add(str(multiaddr.Multiaddr(addr)))

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server, candidates, statuses)
                for addr, answers in judged.items():
                    nursery.start_soon(ask, server, [addr], answers)
        for addr, answers in judged.items():
            self._judge_mapped(addr, verdict(answers))
            statuses += answers
        state = verdict(statuses)
        if state != UNKNOWN or self.state == UNKNOWN:
            self.state, self.confirmed = state, sorted(confirmed)
        log.info("reachability %s (%d servers asked): %s", self.state, len(servers), confirmed)

    def _judge_mapped(self, addr: str, state: str) -> None:
        if self._mapped is None or state == UNKNOWN:
            return
        self._mapped.judge(addr, reachable=state == PUBLIC)
        if state == PRIVATE:
            log.warning(
                "AutoNAT: the router-mapped address %s is not reachable; not announced", addr
            )

    def data_channel_refusal(self, stream: LibP2PStream) -> str | None:
        """For the data channel server: why not to offer a session on ``stream``."""
        try:
            remote = stream.raw.get_remote_address()
        except Exception:  # noqa: BLE001 - transports without an address raise assorted types
            remote = None
        path = connection_path(self._host, stream.raw.muxed_conn.peer_id)
        return data_channel_refusal(
            path,
            str(remote[0]) if remote else None,
            self.state,
            forwarded=self._forwarded
            or (self._mapped is not None and self._mapped.data_port() is not None),
            local=local_networks(),
        )

    def status(self) -> dict[str, Any]:
        return {"reachability": self.state, "confirmed_addrs": self.confirmed}
