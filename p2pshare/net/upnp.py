"""UPnP IGD port mappings with miniupnpc, in worker threads.

miniupnpc (the C library's Python module, from the package index as a binary wheel)
blocks: SSDP discovery waits :data:`DISCOVER_MS`, and every SOAP call waits on the
router's HTTP server. Each call runs in a trio worker thread that trio abandons when
the caller is cancelled or :data:`CALL_TIMEOUT` passes, so a hung router never holds
the daemon; the abandoned thread ends when miniupnpc's own socket timeouts fire. One
lock keeps two calls from using the same miniupnpc object at once. What the C library
prints on stderr (``connect: Connection refused``) goes to the debug log, not the
terminal (p2pshare.net.cstderr).
"""

from __future__ import annotations

import ipaddress
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar

import miniupnpc
import trio

from p2pshare.errors import RemoteError
from p2pshare.net.cstderr import quietly

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

DISCOVER_MS: Final = 1000
CALL_TIMEOUT: Final = 5.0
DESCRIPTION: Final = "p2pshare"
# UPnP error 725: the router keeps only permanent mappings (lease 0).
_ONLY_PERMANENT: Final = ("725", "OnlyPermanentLeasesSupported")


class UpnpError(RemoteError):
    """The UPnP router did not answer, or answered with an error."""


class UpnpMapper:
    """TCP port mappings on one UPnP Internet Gateway Device."""

    method = "upnp"

    def __init__(self, root_url: str = "", *, timeout: float = CALL_TIMEOUT) -> None:
        self._root_url = root_url
        self._timeout = timeout
        self._igd: Any = None
        self._lock = threading.Lock()

    def _device(self) -> Any:
        """The router, found once (in a worker thread): at ``root_url`` or by SSDP."""
        if self._igd is None:
            igd: Any = miniupnpc.UPnP()
            igd.discoverdelay = DISCOVER_MS
            if self._root_url:
                try:
                    igd.selectigd(self._root_url)
                except Exception as exc:  # miniupnpc raises plain Exception
                    raise UpnpError(
                        f"no UPnP router description at {self._root_url} ({exc}); check "
                        "[network] upnp_root_url"
                    ) from exc
            else:
                if not igd.discover():
                    raise UpnpError("no UPnP router answered SSDP discovery")
                igd.selectigd()
            self._igd = igd
        return self._igd

    async def _call(self, what: str, work: Callable[[Any], T]) -> T:
        def run() -> T:
            with self._lock:
                try:
                    return quietly(lambda: work(self._device()), "miniupnpc")
                except UpnpError:
                    raise
                except Exception as exc:  # miniupnpc raises plain Exception
                    raise UpnpError(f"the UPnP router refused to {what}: {exc}") from exc

        try:
            with trio.fail_after(self._timeout):
                return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise UpnpError(f"the UPnP router did not {what} within {self._timeout:g} s") from None

    async def external_ip(self) -> str:
        ip = await self._call("tell its external address", lambda igd: igd.externalipaddress())
        try:
            return str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise UpnpError(f"the UPnP router's external address {ip!r} is not IPv4") from None

    async def map_tcp(self, internal: int, external: int, lifetime: int) -> tuple[int, int]:
        """Map TCP ``internal`` to ``external``: the port and lifetime granted."""

        def add(igd: Any) -> tuple[int, int]:
            args = (external, "TCP", igd.lanaddr, internal, DESCRIPTION, "")
            try:
                ok = igd.addportmapping(*args, lifetime)
                granted = lifetime
            except Exception as exc:
                if not any(mark in str(exc) for mark in _ONLY_PERMANENT):
                    raise
                ok, granted = igd.addportmapping(*args, 0), 0
            if not ok:
                raise UpnpError(f"the UPnP router did not map TCP port {external}")
            return external, granted

        return await self._call(f"map TCP port {external}", add)

    async def unmap_tcp(self, _internal: int, external: int) -> None:
        await self._call(
            f"remove the mapping of TCP port {external}",
            lambda igd: igd.deleteportmapping(external, "TCP"),
        )
