"""Local-network peer discovery with multicast DNS, after the libp2p mDNS spec.

We announce ``<peer-name>._p2p._udp.local`` (``peer-name`` random, host name
``<peer-name>.local``) with one TXT string ``dnsaddr=<multiaddr>/p2p/<peer ID>`` per
address, browse ``_p2p._udp.local`` and report every peer found to a trio channel.

py-libp2p 0.8.1 has mDNS (``new_host(enable_mDNS=True)``) but it cannot connect two
nodes listening on 0.0.0.0:

* it advertises ``host.get_transport_addrs()`` verbatim, so peers are told
  ``/ip4/0.0.0.0/tcp/4001``, which dials the *dialer itself*; its A record comes from a
  "connect to 8.8.8.8" probe, which yields 127.0.0.1 on a network without a default route;
* it reports each service once, through a process-wide handler list, from zeroconf's
  browser thread, possibly before anyone registered a handler (peers found while
  ``host.run()`` starts are lost for good);
* its start and stop block the trio thread on zeroconf's network I/O (about 1.7 s to
  register), and its stop joins a browser thread that may be waiting on trio;
* it puts extra addresses under ``dnsaddr2``, ``dnsaddr3``... keys, which other
  implementations ignore.

Threads: zeroconf runs its own asyncio loop in a thread, and a browser thread that
calls :meth:`Mdns._changed`.  Neither ever waits for trio: the browser thread only
queues a callback with ``TrioToken.run_sync_soon``, and trio awaits zeroconf
coroutines through :func:`_in_zeroconf_loop`, which cancels them when trio cancels.
Closing (goodbye packets, joining zeroconf's threads) runs in a worker thread and is
bounded by ``CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import string
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_TYPE = "_p2p._udp.local."
PEER_NAME_LENGTH = 48  # under 64 characters; random, as go-libp2p does
RESOLVE_TIMEOUT_MS = 3000
RESOLVE_CONCURRENCY = 8
CLOSE_TIMEOUT = 3.0
REPORT_AGAIN_INTERVAL = 60.0
MAX_ADDRS = 16
MAX_PEERS = 256
MAX_TXT_STRING = 255
_DNSADDR_KEY = re.compile(rb"dnsaddr[0-9]*")  # py-libp2p writes dnsaddr2, dnsaddr3, ...


def _ip_of(addr: multiaddr.Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of an ``/ip4|ip6/<ip>/tcp/<port>`` address, None for any other shape."""
    protocols = [p.name for p in addr.protocols()]
    if protocols[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]) or len(protocols) != 2:
        return None
    return ipaddress.ip_address(addr.value_for_protocol(protocols[0]))


def _dialable(addr: multiaddr.Multiaddr) -> bool:
    """TCP over a concrete IP that a peer on the link can use (no 0.0.0.0, no fe80::)."""
    try:
        ip = _ip_of(addr)
    except Exception:  # noqa: BLE001 - multiaddr raises assorted types for odd input
        return False
    return ip is not None and not ip.is_unspecified and not (ip.version == 6 and ip.is_link_local)


def _is_loopback(addr: multiaddr.Multiaddr) -> bool:
    ip = _ip_of(addr)
    return ip is not None and ip.is_loopback


def _without_peer_id(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    text = str(addr)
    return multiaddr.Multiaddr(text.split("/p2p/", 1)[0]) if "/p2p/" in text else addr


def advertisable(addrs: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """The addresses worth telling peers on the link, best first.

    Unspecified and IPv6 link-local addresses are dropped; loopback addresses are
    kept only when there is nothing else (two nodes on one machine).
    """
    usable: list[multiaddr.Multiaddr] = []
    for addr in map(_without_peer_id, addrs):
        if _dialable(addr) and addr not in usable:
            usable.append(addr)
    outside = [a for a in usable if not _is_loopback(a)]
    return (outside or usable)[:MAX_ADDRS]


def encode_txt(peer_id: ID, addrs: Sequence[multiaddr.Multiaddr]) -> bytes:
    """TXT rdata: one length-prefixed ``dnsaddr=<addr>/p2p/<id>`` string per address."""
    rdata = b""
    for addr in addrs:
        entry = f"dnsaddr={addr}/p2p/{peer_id}".encode()
        if len(entry) <= MAX_TXT_STRING:
            rdata += bytes([len(entry)]) + entry
    return rdata


def _txt_strings(rdata: bytes) -> list[bytes]:
    strings = []
    offset = 0
    while offset < len(rdata):
        length = rdata[offset]
        strings.append(rdata[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return strings


def decode_txt(rdata: bytes) -> PeerInfo | None:
    """The peer a TXT record announces, with its dialable addresses; None if it has none.

    Every ``dnsaddr`` must name the same peer; addresses naming another are ignored.
    """
    peer_id: ID | None = None
    addrs: list[multiaddr.Multiaddr] = []
    for entry in _txt_strings(rdata):
        key, sep, value = entry.partition(b"=")
        if not sep or not _DNSADDR_KEY.fullmatch(key):
            continue
        try:
            text = value.decode()
            head, marker, tail = text.rpartition("/p2p/")
            if not marker:
                continue
            entry_id = ID.from_base58(tail)
            addr = multiaddr.Multiaddr(head)
        except Exception as exc:  # noqa: BLE001 - anyone on the link can send us anything
            log.debug("mDNS: ignoring TXT entry %r: %s", entry, exc)
            continue
        if peer_id is None:
            peer_id = entry_id
        if entry_id == peer_id and _dialable(addr) and addr not in addrs:
            addrs.append(addr)
    if peer_id is None or not addrs:
        return None
    addrs.sort(key=_is_loopback)  # loopback last: it only helps a peer on this machine
    return PeerInfo(peer_id, addrs[:MAX_ADDRS])


async def _in_zeroconf_loop(zc: Zeroconf, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on zeroconf's asyncio loop and await it from trio, cancellably."""
    loop = zc.loop
    if loop is None or loop.is_closed():
        coro.close()
        raise RuntimeError("zeroconf is closed")
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_future: object) -> None:
        # Called in zeroconf's loop thread; must not wait for trio.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future = asyncio.run_coroutine_threadsafe(coro, loop)
    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


def _random_peer_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(PEER_NAME_LENGTH))


class Mdns:
    """Announce one peer on the local network and report the peers announced there."""

    def __init__(self, peer_id: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """``addrs``: where this peer listens (0.0.0.0 already expanded to interface IPs)."""
        self._peer_id = peer_id
        self._addrs = advertisable(addrs)
        self._name = f"{_random_peer_name()}.{SERVICE_TYPE}"
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._zc: Zeroconf | None = None
        self._found: trio.MemorySendChannel[PeerInfo] | None = None
        self._resolving: set[str] = set()
        self._again: set[str] = set()
        self._peers: dict[str, PeerInfo] = {}  # service name -> what it announced
        self._limiter = trio.Semaphore(RESOLVE_CONCURRENCY)

    def service_info(self) -> ServiceInfo:
        peer_name = self._name.removesuffix(f".{SERVICE_TYPE}")
        ips = [ip for ip in map(_ip_of, self._addrs) if ip is not None and not ip.is_loopback]
        return ServiceInfo(
            SERVICE_TYPE,
            self._name,
            port=int(self._addrs[0].value_for_protocol("tcp")),
            properties=encode_txt(self._peer_id, self._addrs),
            server=f"{peer_name}.local.",
            addresses=[ip.packed for ip in ips],
        )

    async def run(self, found: trio.MemorySendChannel[PeerInfo]) -> None:
        """Announce, browse and send every peer found to ``found`` until cancelled.

        A peer is sent again when its record changes, and every
        ``REPORT_AGAIN_INTERVAL`` while it stays announced, so a dropped connection
        is made again. If mDNS cannot start this logs why and returns.
        """
        async with found:
            self._found = found
            self._token = trio.lowlevel.current_trio_token()
            try:
                # Shielded: a cancelled open would leave sockets and threads behind.
                # It takes milliseconds; cancellation lands at the next checkpoint.
                with trio.CancelScope(shield=True):
                    zc, browser = await trio.to_thread.run_sync(self._open)
            except Exception as exc:  # noqa: BLE001 - the node works without mDNS
                log.error("mDNS could not start, local peers will not be found: %s", exc)
                return
            self._zc = zc
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        nursery.start_soon(self._report_again)
                        await self._announce(zc)
                        await trio.sleep_forever()
                    finally:
                        self._nursery = None
            finally:
                self._zc = None
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                    await trio.to_thread.run_sync(
                        partial(self._close, zc, browser), abandon_on_cancel=True
                    )
                if scope.cancelled_caught:
                    log.warning("mDNS did not close within %g s; left it behind", CLOSE_TIMEOUT)

    # -- zeroconf's side (worker and zeroconf threads)

    def _open(self) -> tuple[Zeroconf, ServiceBrowser]:
        zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
        try:
            return zc, ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._changed])
        except BaseException:
            zc.close()
            raise

    @staticmethod
    def _close(zc: Zeroconf, browser: ServiceBrowser) -> None:
        browser.cancel()  # joins the browser thread, which never waits for trio
        zc.close()  # sends the goodbye packets, then stops zeroconf's loop thread

    def _changed(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Zeroconf's browser thread (arguments come by name): hand over to trio, never wait."""
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._on_change, name, state_change)

    # -- trio's side

    async def _announce(self, zc: Zeroconf) -> None:
        if not self._addrs:
            log.warning("mDNS: no address to announce; only looking for other peers")
            return
        # Probing and announcing take about a second; it happens on zeroconf's loop.
        try:
            await _in_zeroconf_loop(zc, zc.async_register_service(self.service_info()))
        except Exception as exc:  # noqa: BLE001 - we can still find others
            log.error("mDNS: announcing this node failed: %r", exc)
            return
        log.info("mDNS: announcing %s", ", ".join(str(a) for a in self._addrs))

    def _on_change(self, name: str, state_change: ServiceStateChange) -> None:
        """Runs in trio via run_sync_soon: must not raise."""
        if name == self._name or self._nursery is None:
            return
        if state_change is ServiceStateChange.Removed:
            log.debug("mDNS: %s left", name)
            self._peers.pop(name, None)
            return
        if name in self._resolving:
            self._again.add(name)
            return
        try:
            self._nursery.start_soon(self._resolve, name)
        except RuntimeError:  # the nursery is closing: we are stopping anyway
            return
        self._resolving.add(name)

    async def _resolve(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                info = await self._lookup(name)
                if info is not None and info.peer_id != self._peer_id:
                    log.debug("mDNS: %s is %s at %s", name, info.peer_id, info.addrs)
                    if name in self._peers or len(self._peers) < MAX_PEERS:
                        self._peers[name] = info
                    if not await self._report(info):
                        return
                if name not in self._again:
                    return
        finally:
            self._resolving.discard(name)

    async def _report(self, info: PeerInfo) -> bool:
        """Send ``info`` on; False once nobody listens any more."""
        assert self._found is not None
        try:
            await self._found.send(info)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _report_again(self) -> None:
        while True:
            await trio.sleep(REPORT_AGAIN_INTERVAL)
            for info in list(self._peers.values()):
                if not await self._report(info):
                    return

    async def _lookup(self, name: str) -> PeerInfo | None:
        zc = self._zc
        if zc is None:
            return None
        info = ServiceInfo(SERVICE_TYPE, name)
        async with self._limiter:
            try:
                if not await _in_zeroconf_loop(zc, info.async_request(zc, RESOLVE_TIMEOUT_MS)):
                    log.debug("mDNS: %s did not answer", name)
                    return None
            except Exception as exc:  # noqa: BLE001 - a failed lookup only loses that peer
                log.debug("mDNS: looking up %s failed: %s", name, exc)
                return None
        found = decode_txt(info.text or b"")
        if found is None:
            log.debug("mDNS: %s announces no dialable libp2p address", name)
        return found
