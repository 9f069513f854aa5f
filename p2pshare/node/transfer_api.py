"""The transfer service of a node: serving chunks to peers and ``get``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.control.server import Emit, Handler, InvalidParamsError
from p2pshare.errors import UserError
from p2pshare.net.datachannel import DataChannelOpenError, open_data_channel
from p2pshare.net.peers import open_stream
from p2pshare.proto.ticket import parse_content_ref
from p2pshare.proto.transfer import PROTOCOL_ID
from p2pshare.transfer.downloader import Download, Source
from p2pshare.transfer.uploader import UploadLimiter, serve_transfer

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from p2pshare.net.streams import ByteStream, HandlerGuard, LibP2PStream
    from p2pshare.node.discovery import Discovery
    from p2pshare.store.shares import ShareStore
    from p2pshare.transfer.source import LocalContent

log = logging.getLogger(__name__)


class ClientGoneError(UserError):
    """The CLI that asked for a download disconnected (Ctrl-C): stop and keep the progress."""


OPEN_TIMEOUT = 15.0
FIND_TIMEOUT = 10.0
DATA_CHANNEL_TIMEOUT = 5.0
TAKEOVER_WAIT = 3.0


@dataclass
class TransferApi:
    host: IHost
    shares: ShareStore
    local: LocalContent
    discovery: Discovery
    limiter: UploadLimiter
    _active: dict[str, trio.Event] = field(default_factory=dict)

    def register(self, guard: HandlerGuard) -> None:
        # A transfer stream lasts as long as the download it feeds; the per-peer
        # stream cap, not a deadline, bounds what an idle client can hold.
        guard.register(PROTOCOL_ID, self._serve, bounded=False)

    async def _serve(self, stream: LibP2PStream) -> None:
        await serve_transfer(stream, self.local, limiter=self.limiter, peer=stream.peer_id)

    async def _open(self, source: Source, paths: dict[str, str]) -> ByteStream:
        """The encrypted data channel if the provider offers one, else a libp2p stream."""
        try:
            stream: ByteStream = await open_data_channel(
                self.host, source.peer_id, list(source.addrs), timeout=DATA_CHANNEL_TIMEOUT
            )
            paths[source.peer_id] = "data-channel"
        except DataChannelOpenError as exc:
            log.info("no data channel to %s (%s); using the libp2p stream", source.peer_id, exc)
            stream = await open_stream(
                self.host, source.peer_id, source.addrs, PROTOCOL_ID, OPEN_TIMEOUT
            )
            paths[source.peer_id] = "libp2p"
        return stream

    async def serve_data_channel(self, stream: ByteStream, peer: str) -> None:
        await serve_transfer(stream, self.local, limiter=self.limiter, peer=peer)

    async def get(self, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        ref, dest_text = params.get("ref"), params.get("dest")
        if not isinstance(ref, str) or not isinstance(dest_text, str):
            raise InvalidParamsError(
                "parameters 'ref' (content ID or ticket) and 'dest' are needed"
            )
        dest = Path(dest_text)
        if not dest.is_absolute():
            raise InvalidParamsError("parameter 'dest' must be an absolute path")
        cid, ticket = parse_content_ref(ref.strip())
        me = self.host.get_id().to_base58()
        hints = []
        if ticket is not None and ticket.peer_id != me:
            hints.append(Source(ticket.peer_id, ticket.addrs))
        key = str(cid)
        running = self._active.get(key)
        if running is not None:
            # After Ctrl-C the old download notices its client is gone at its next
            # progress event (a fraction of a second); a get run again at once waits.
            with trio.move_on_after(TAKEOVER_WAIT):
                await running.wait()
            if key in self._active:
                raise UserError(f"{cid} is already being downloaded by this node")

        async def find() -> list[Source]:
            found = await self.discovery.find(key, FIND_TIMEOUT)
            return [Source(p.peer_id, p.addrs) for p in found if p.peer_id != me]

        async def progress(data: dict[str, Any]) -> None:
            try:
                await emit("progress", data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientGoneError(
                    f"the command that started the download of {key} went away; "
                    "what was verified is kept for the next get"
                ) from None

        paths: dict[str, str] = {}

        async def open_(source: Source) -> ByteStream:
            return await self._open(source, paths)

        download = Download(
            cid=cid,
            dest=dest,
            force=bool(params.get("force", False)),
            catalog=self.shares.catalog,
            local=self.local,
            open_stream=open_,
            find_sources=find,
            hints=hints,
            progress=progress,
        )
        finished = self._active[key] = trio.Event()
        try:
            report = await download.run()
        finally:
            del self._active[key]
            finished.set()
        assert download.signed is not None
        pages = tuple(download.pages[i].hashes for i in sorted(download.pages))
        await trio.to_thread.run_sync(self.shares.adopt, download.signed, pages, dest)
        self.discovery.provide_soon(key)
        log.info("downloaded %s to %s (%d bytes)", key, dest, report.size)
        return report.as_dict() | {"paths": {p: paths.get(p, "?") for p in report.peers}}

    def handlers(self) -> dict[str, Handler]:
        return {"get": self.get}
