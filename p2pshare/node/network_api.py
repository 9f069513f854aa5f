"""Control methods for the network: find, peers, connect, and the status of announcements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pshare.control.server import Emit, Handler, InvalidParamsError
from p2pshare.net.walks import LookupTrace
from p2pshare.node.discovery import withheld
from p2pshare.proto.cid import ContentId

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.node.discovery import Discovery
    from p2pshare.node.metrics_api import MetricsApi
    from p2pshare.store.catalog import Catalog, ShareRow

DEFAULT_FIND_TIMEOUT = 10.0
MAX_FIND_TIMEOUT = 120.0


@dataclass
class NetworkApi:
    discovery: Discovery
    catalog: Catalog
    # Shares after a cheap check of their files (p2pshare.node.shares_api.checked_shares).
    shares: Callable[[], Awaitable[list[ShareRow]]]
    live: MetricsApi

    async def find(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        text = params.get("cid")
        if not isinstance(text, str):
            raise InvalidParamsError("parameter 'cid' must be a content ID")
        cid = str(ContentId.parse(text))
        timeout = params.get("timeout", DEFAULT_FIND_TIMEOUT)
        if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_FIND_TIMEOUT:
            raise InvalidParamsError(
                f"parameter 'timeout' must be a number of seconds up to {MAX_FIND_TIMEOUT:g}"
            )
        self.discovery.require_peers()
        trace = LookupTrace()
        providers = await self.discovery.find(cid, float(timeout), trace)
        return {
            "cid": cid,
            "providers": [{"peer_id": p.peer_id, "addrs": list(p.addrs)} for p in providers],
            "lookup": {
                "hops": trace.hops,
                "queried": trace.queried,
                "timed_out": trace.timed_out,
            },
        }

    async def peers(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        found = await self.discovery.peers()
        traffic = self.live.metrics.peer_traffic()
        idle = {"bytes_sent": 0, "bytes_received": 0, "up_bps": 0.0, "down_bps": 0.0}
        return {"peers": [peer | traffic.get(peer["peer_id"], idle) for peer in found]}

    async def connect(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        addr = params.get("addr")
        if not isinstance(addr, str) or not addr:
            raise InvalidParamsError("parameter 'addr' must be a multiaddr")
        return {"peer_id": await self.discovery.connect(addr)}

    async def status(self) -> dict[str, Any]:
        rows = await self.shares()
        provided = self.catalog.provide_status()
        # Job outputs are never announced, and not the user's shares (compute outputs).
        outputs = self.catalog.job_outputs()
        return self.live.status() | {
            "routing_table": self.discovery.routing_table_size(),
            "observed_addrs": self.discovery.observed_addrs(),
            "shares": [
                {
                    "cid": row.cid,
                    "provided_at": provided[row.cid].provided_at if row.cid in provided else None,
                    "provided_to": provided[row.cid].provided_to if row.cid in provided else None,
                    "stale": row.stale_reason,
                    "withheld": withheld(self.catalog, row.cid),
                }
                for row in rows
                if row.cid not in outputs
            ],
        }

    def handlers(self) -> dict[str, Handler]:
        return {"find": self.find, "peers": self.peers, "connect": self.connect}
