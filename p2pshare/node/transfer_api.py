"""The transfer service of a node: serving chunks to peers and ``get``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.control.server import Emit, Handler, InvalidParamsError, umask_param
from p2pshare.errors import P2PShareError, UserError, leaf_errors
from p2pshare.net.datachannel import DataChannelOpenError
from p2pshare.net.peers import PeerAddrs
from p2pshare.node.downloads import (
    ACTIVE,
    DownloadManager,
    remove_empty_parent,
    remove_partial,
)
from p2pshare.node.timeouts import (
    DATA_CONNECT_TIMEOUT,
    DATA_OFFER_TIMEOUT,
    PROVIDER_FIND_TIMEOUT,
    PROVIDER_OPEN_TIMEOUT,
)
from p2pshare.proto.cid import ContentId
from p2pshare.proto.sealed import NotARecipientError
from p2pshare.proto.ticket import parse_content_ref
from p2pshare.proto.transfer import PROTOCOL_ID
from p2pshare.store.catalog import DownloadRequest
from p2pshare.store.staging import size_text
from p2pshare.transfer.destination import check_space, free_bytes
from p2pshare.transfer.downloader import Download, DownloadReport, MemoryRecords, Source
from p2pshare.transfer.failures import ContentTooLargeError, NoProvidersError
from p2pshare.transfer.local import open_local
from p2pshare.transfer.outpath import (
    UserOutput,
    check_output,
    into_directory,
    may_replace,
    named_in,
    named_refusal,
    private_name,
)
from p2pshare.transfer.private import plaintext_size, write_plaintext
from p2pshare.transfer.upload_slots import UploadSlots
from p2pshare.transfer.uploader import UploadLimiter, serve_transfer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.net.network import Network
    from p2pshare.net.streams import ByteStream, LibP2PStream
    from p2pshare.node.discovery import Discovery
    from p2pshare.node.downloads import Watch
    from p2pshare.proto.sealed import OpenedShare
    from p2pshare.proto.signed_manifest import SignedManifest
    from p2pshare.store.shares import ShareStore
    from p2pshare.transfer.links import FindSources
    from p2pshare.transfer.outpath import HomeFence
    from p2pshare.transfer.source import LocalContent

log = logging.getLogger(__name__)


@dataclass
class TransferApi:
    network: Network
    shares: ShareStore
    local: LocalContent
    discovery: Discovery
    limiter: UploadLimiter
    # The umask the daemon was started with (not the private one it then sets): for a
    # client that sends none (older ones), and for requests kept from then.
    daemon_umask: int
    # [store] quota_bytes: what seeded (pinned) content may take with the rest of the store.
    quota_bytes: int
    # The node's home: no download the user asked for is written inside it.
    fence: HomeFence
    # Bytes free on a directory's file system (tests fake a small disk).
    free_space: Callable[[Path], int] = free_bytes
    # The chunk buffers all upload streams take turns with (docs/transfer.md).
    slots: UploadSlots = field(default_factory=UploadSlots)
    downloads: DownloadManager = field(init=False)

    def __post_init__(self) -> None:
        self.downloads = DownloadManager(
            self.shares.catalog,
            self._download,
            stored_at=lambda cid: str(self.shares.private_root(ContentId.parse(cid))),
            fence=self.fence,
        )
        self.network.on_connected(self.downloads.peer_connected)

    def register(self) -> None:
        # A transfer stream lasts as long as the download it feeds; the per-peer
        # stream cap, not a deadline, bounds what an idle client can hold.
        self.network.register(PROTOCOL_ID, self._serve, bounded=False)

    async def _serve(self, stream: LibP2PStream) -> None:
        await serve_transfer(
            stream,
            self.local.for_peer(stream.peer_id),
            limiter=self.limiter,
            slots=self.slots,
            peer=stream.peer_id,
        )

    async def _open(self, source: Source, paths: dict[str, str]) -> ByteStream:
        """The encrypted data channel if the provider offers one, else a libp2p stream.

        Both ride on a libp2p connection, made first: a provider that cannot be reached
        fails once, and its dial does not eat into the offer's time.  A slow offer is
        waited for (node/timeouts.py says why).
        """
        await self.network.connect(PeerAddrs(source.peer_id, source.addrs), PROVIDER_OPEN_TIMEOUT)
        try:
            stream: ByteStream = await self.network.open_data_channel(
                source.peer_id,
                list(source.addrs),
                offer_timeout=DATA_OFFER_TIMEOUT,
                connect_timeout=DATA_CONNECT_TIMEOUT,
            )
            paths[source.peer_id] = "data-channel"
        except DataChannelOpenError as exc:
            log.info("no data channel to %s (%s); using the libp2p stream", source.peer_id, exc)
            stream = await self.network.open_stream(
                source.peer_id, source.addrs, PROTOCOL_ID, PROVIDER_OPEN_TIMEOUT
            )
            relayed = self.network.connection_path(source.peer_id) == "relayed"
            paths[source.peer_id] = "relay" if relayed else "libp2p"
        return stream

    async def serve_data_channel(self, stream: ByteStream, peer: str) -> None:
        await serve_transfer(
            stream, self.local.for_peer(peer), limiter=self.limiter, slots=self.slots, peer=peer
        )

    async def get(self, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        ref, dest_text = params.get("ref"), params.get("dest")
        if not isinstance(ref, str):
            raise InvalidParamsError("parameter 'ref' (content ID or ticket) is needed")
        cid, ticket = parse_content_ref(ref.strip())
        if params.get("seed_only"):
            # A private share's ciphertext, kept in the store to help seed it (unread).
            dest_text = str(self.shares.private_root(cid))
            self.shares.private_root(cid).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not isinstance(dest_text, str) or not Path(dest_text).is_absolute():
            raise InvalidParamsError("parameter 'dest' must be an absolute path")
        sources = () if ticket is None else ((ticket.peer_id, ticket.addrs),)
        now = int(time.time())
        request = DownloadRequest(
            cid=str(cid),
            destination=dest_text,
            sources=sources,
            force=bool(params.get("force", False)),
            state=ACTIVE,
            error=None,
            created_at=now,
            updated_at=now,
            umask=umask_param(params, self.daemon_umask),
        )
        try:
            # Seeding a private share held here (received to be read) fetches nothing:
            # its store directory exists, and a download would refuse to write there.
            if params.get("seed_only"):
                held = await self._open_held_private(request, seed_only=True)
                if held is not None:
                    return held
            job = await self.downloads.submit(request)
            return await self.downloads.follow(job, emit)
        finally:
            if self.shares.catalog.download_request(str(cid)) is None:
                # Done, refused or failed for good: a store directory made for a private
                # share's ciphertext that holds nothing must not stay.
                remove_empty_parent(self.shares.private_root(cid))

    async def _download(self, request: DownloadRequest, watch: Watch) -> dict[str, Any]:
        """One attempt at ``request``; a completed download is served from where it lies.

        Content this node already holds complete is copied from its own store, not
        fetched from peers (p2pshare.transfer.local); should that fail (a shared file
        changed on disk), the peers are asked for the rest.
        """
        key = request.cid
        cid = ContentId.parse(key)
        paths: dict[str, str] = {}
        download = None
        seed_only = request.destination == str(self.shares.private_root(cid))
        held = await self._open_held_private(request, seed_only)
        if held is not None:
            return held
        if self.local.stored.holds(cid):
            # except*: the downloader's nursery wraps its error in an ExceptionGroup.
            try:
                download = await self._copy_from_store(request, watch, paths)
            except* NoProvidersError as group:
                log.info(
                    "copying %s from this node's store failed (%s); asking peers",
                    key,
                    leaf_errors(group)[0],
                )
        if download is None:
            download = await self._fetch_from_peers(request, watch, paths)
        report = download.report
        assert download.signed is not None
        pages = tuple(download.pages[i].hashes for i in sorted(download.pages))
        # Where it went: -o DIR/ named it after the share once the manifest came.
        dest = download.dest
        signed = download.signed
        if signed.manifest.sealed is not None:
            # The ciphertext is kept and seeded from the store; the plaintext is the user's.
            root = download.dest
            await trio.to_thread.run_sync(
                lambda: self.shares.adopt(signed, pages, root, stored=True)
            )
            self._keep_within_quota(key, seed_only=seed_only)
            if seed_only:  # a recipient's copy is never announced (store.private)
                self.discovery.provide_soon(key)
            else:
                await self._open_private(request, signed, root, report)
            return report.as_dict() | {
                "paths": {p: paths.get(p, "?") for p in report.peers},
                "private": True,
                "seed_only": seed_only,
            }
        await trio.to_thread.run_sync(self.shares.adopt, download.signed, pages, dest)
        self.discovery.provide_completed(key)
        log.info(
            "downloaded %s to %s (%d bytes, %d chunks resumed, %d bytes requested)",
            key,
            dest,
            report.size,
            report.resumed_chunks,
            report.requested_bytes,
        )
        return report.as_dict() | {"paths": {p: paths.get(p, "?") for p in report.peers}}

    def _check_recipient(self, signed: SignedManifest) -> OpenedShare:
        try:
            return self.shares.open_private(signed)
        except NotARecipientError:
            raise NotARecipientError(
                f"{signed.cid} is a private share not sealed to this node "
                f"({self.network.peer_id}), so its content cannot be read here; "
                "nothing was written"
            ) from None

    async def _open_held_private(
        self, request: DownloadRequest, seed_only: bool
    ) -> dict[str, Any] | None:
        """The result of a get of a private share whose ciphertext this node stores."""
        row = self.shares.catalog.share(request.cid)
        if row is None or not row.stored or not self.local.stored.holds(ContentId.parse(row.cid)):
            return None
        signed = self.shares.signed_manifest(row.cid)
        if signed.manifest.sealed is None:
            return None
        if seed_only:
            self._check_seed_room(signed)
            self._keep_within_quota(row.cid, seed_only=True)
            # Held to be read until now, so never announced; seeding it is.
            self.discovery.provide_soon(row.cid)
        report = DownloadReport(row.cid, request.destination, 0, 0, 0)
        if not seed_only:
            await self._open_private(request, signed, Path(row.root), report)
        return report.as_dict() | {"paths": {}, "private": True, "seed_only": seed_only}

    def _private_target(
        self, signed: SignedManifest, *, request: DownloadRequest, seed_only: bool
    ) -> Path | None:
        """Where a private share's ciphertext goes: the store; refused if it is not ours,
        or (before anything is fetched) if its plaintext may not or cannot be written."""
        if signed.manifest.sealed is None:
            if seed_only:
                raise UserError(f"{signed.cid} is not a private share; fetch it with get -o")
            return None
        root = self.shares.private_root(signed.cid)
        root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if seed_only:
            self._check_seed_room(signed)
        else:
            opened = self._check_recipient(signed)
            dest = self._plaintext_dest(request, opened, signed.cid)
            check_output(
                dest, self.fence, into=into_directory(request.destination), force=request.force
            )
            needed = plaintext_size(opened)
            if dest.parent.stat().st_dev == root.parent.stat().st_dev:
                # The ciphertext lands in the store first, on the same disk: both must
                # fit (counted whole, even when part of it is already there).
                needed += signed.manifest.total_size
            check_space(signed.cid, dest, needed, self.free_space)
        return root

    @staticmethod
    def _plaintext_dest(request: DownloadRequest, opened: OpenedShare, cid: object) -> Path:
        """The user's destination for a private share's plaintext: -o DIR/ names it after
        the share, a name only its recipients learn."""
        dest = Path(request.destination)
        if into_directory(request.destination):
            return named_in(dest, private_name(opened.body, cid), f"private share {cid}")
        return dest

    def _check_seed_room(self, signed: SignedManifest) -> None:
        """Refuse to seed what pinned content and the quota leave no room for.

        Seeded content is pinned: gc never removes it, so it must fit beside the other
        pinned content (unpinned content gives way to it, oldest first).
        """
        cid = str(signed.cid)
        size = signed.manifest.total_size
        row = self.shares.catalog.share(cid)
        if row is not None and row.stored and row.pinned:
            return
        pinned = self.shares.pinned_bytes()
        if pinned + size > self.quota_bytes:
            raise StoreQuotaError(
                f"cannot seed {cid}: it takes {size_text(size)} and pinned content already "
                f"takes {size_text(pinned)} of the store quota of {size_text(self.quota_bytes)}; "
                "nothing was fetched. Unpin or unshare stored content you no longer need "
                "(p2pshare ls), or raise [store] quota_bytes in config.toml"
            )

    def _keep_within_quota(self, cid: str, *, seed_only: bool) -> None:
        """Pin seeded content; then remove unpinned stored content beyond the quota."""
        if seed_only:
            self.shares.set_pinned(cid, pinned=True)
        report = self.shares.gc(keep_bytes=self.quota_bytes)
        if report.removed:
            log.info("the store quota removed %s", ", ".join(report.removed))

    async def _open_private(
        self, request: DownloadRequest, signed: SignedManifest, root: Path, report: DownloadReport
    ) -> None:
        """Decrypt a private share's stored ciphertext at ``root`` to the destination."""
        started = time.monotonic()
        opened = self._check_recipient(signed)
        dest = self._plaintext_dest(request, opened, signed.cid)
        report.destination = str(dest)
        umask = self.daemon_umask if request.umask is None else request.umask
        with named_refusal(dest, self.fence, into=into_directory(request.destination)):
            report.size = await trio.to_thread.run_sync(
                lambda: write_plaintext(
                    opened,
                    root,
                    dest,
                    force=may_replace(request.destination, force=request.force),
                    umask=umask,
                    fence=self.fence,
                    free_space=self.free_space,
                )
            )
        report.files = len(opened.body.entries)
        report.chunks = signed.manifest.total_chunks
        report.elapsed_s += time.monotonic() - started
        log.info("opened private share %s to %s (%d bytes)", signed.cid, dest, report.size)

    def _download_of(
        self,
        request: DownloadRequest,
        watch: Watch,
        open_stream: Callable[[Source], Awaitable[ByteStream]],
        find_sources: FindSources,
        hints: list[Source],
    ) -> Download:
        key = request.cid
        seed_only = request.destination == str(self.shares.private_root(ContentId.parse(key)))
        sealed_to_read = False

        def redirect(signed: SignedManifest) -> Path | None:
            nonlocal sealed_to_read
            sealed_to_read = signed.manifest.sealed is not None and not seed_only
            return self._private_target(signed, request=request, seed_only=seed_only)

        def announce() -> None:
            # A recipient's copy of a private share is never announced, not even
            # partial: only a seed is (p2pshare.store.private).
            if not sealed_to_read:
                self.discovery.provide_soon(key)

        download = Download(
            cid=ContentId.parse(key),
            dest=Path(request.destination),
            force=request.force,
            catalog=self.shares.catalog,
            local=self.local,
            open_stream=open_stream,
            find_sources=find_sources,
            hints=hints,
            # Announced while still partial, so other downloaders' lookups find it
            # and fetch the chunks it already holds (the seeder is not the only source).
            announce=announce,
            umask=self.daemon_umask if request.umask is None else request.umask,
            redirect=redirect,
            # Seeding writes the node's own store only: nothing for the user, no fence.
            output=UserOutput(
                None if seed_only else self.fence, into_directory(request.destination)
            ),
            free_space=self.free_space,
        )
        watch(download.progress)
        return download

    async def _copy_from_store(
        self, request: DownloadRequest, watch: Watch, paths: dict[str, str]
    ) -> Download:
        me = self.network.peer_id

        async with trio.open_nursery() as nursery:

            async def open_(_source: Source) -> ByteStream:
                paths[me] = "local"
                return await open_local(nursery, self.local.stored)

            download = self._download_of(request, watch, open_, _nobody, [Source(me, ())])
            await download.run()
            nursery.cancel_scope.cancel()
        return download

    async def _fetch_from_peers(
        self, request: DownloadRequest, watch: Watch, paths: dict[str, str]
    ) -> Download:
        key = request.cid
        me = self.network.peer_id
        hints = [Source(peer, addrs) for peer, addrs in request.sources if peer != me]
        if not hints:
            # A ticket's provider is dialed at its addresses; a bare content ID needs peers.
            self.discovery.require_peers()

        async def open_(source: Source) -> ByteStream:
            return await self._open(source, paths)

        download = self._download_of(request, watch, open_, self._finder(key), hints)
        await download.run()
        return download

    async def fetch(
        self, cid: ContentId, dest: Path, *, hints: list[Source], max_bytes: int | None
    ) -> DownloadReport:
        """Download ``cid`` to ``dest`` for the node's own use (a compute job's content).

        Unlike ``get`` it is not listed, resumed or shared afterwards, and content larger
        than ``max_bytes`` is refused (ContentTooLargeError) as soon as
        its manifest says so.  Since it is never resumed, an attempt that fails removes
        the partial it made.  What it writes is private (0600/0700).
        """
        me = self.network.peer_id
        key = str(cid)

        def check_input(signed: SignedManifest) -> None:
            _no_private_input(signed)
            total = signed.manifest.total_size
            if max_bytes is not None and total > max_bytes:
                raise ContentTooLargeError(
                    f"{key} has {total} bytes, more than the {max_bytes} allowed"
                )

        paths: dict[str, str] = {}

        async def open_(source: Source) -> ByteStream:
            return await self._open(source, paths)

        hinted = [h for h in hints if h.peer_id != me]

        async def attempt(find_sources: FindSources) -> DownloadReport:
            download = Download(
                cid=cid,
                dest=dest,
                force=False,
                catalog=MemoryRecords(),
                local=self.local,
                open_stream=open_,
                find_sources=find_sources,
                hints=hinted,
                redirect=check_input,
            )
            return await _run_once(download, dest)

        if hinted:
            # The peer that asked usually holds the content: skip the DHT lookup then.
            try:
                return await attempt(_nobody)
            except NoProvidersError as exc:
                log.info("hinted peers lack %s (%s); asking the DHT", key, exc)
        return await attempt(self._finder(key))

    def handlers(self) -> dict[str, Handler]:
        return {"get": self.get} | self.downloads.handlers()

    def _finder(self, key: str) -> FindSources:
        """The providers of ``key`` but this node, by a DHT lookup."""
        me = self.network.peer_id

        async def find(want: int, ask: list[str]) -> list[Source]:
            found = await self.discovery.find(key, PROVIDER_FIND_TIMEOUT, want=want, ask=ask)
            return [Source(p.peer_id, p.addrs) for p in found if p.peer_id != me]

        return find


async def _nobody(_want: int, _ask: list[str]) -> list[Source]:
    """Finds no provider: the content is local, or only the hinted peers are asked."""
    return []


async def _run_once(download: Download, dest: Path) -> DownloadReport:
    """Run a download that is never resumed: a failed one leaves no partial behind."""
    try:
        return await download.run()
    except BaseException as exc:
        if download.output is not None:
            remove_partial(dest)
        inner = _unwrapped(exc)
        if inner is exc:
            raise
        raise inner from None


def _unwrapped(exc: BaseException) -> BaseException:
    """The p2pshare error inside the ExceptionGroups of the download's nurseries.

    The callers of ``fetch`` catch NoProvidersError (to ask the DHT after the hints)
    and ContentTooLargeError (a compute worker's ``oversize``): wrapped, neither would
    be caught.  Anything else, a cancellation above all, goes on as it is.
    """
    leaves = leaf_errors(exc)
    if isinstance(exc, BaseExceptionGroup) and all(isinstance(e, P2PShareError) for e in leaves):
        return leaves[0]
    return exc


class StoreQuotaError(UserError):
    """Seeding would pin more than ``[store] quota_bytes`` allows."""


def _no_private_input(signed: SignedManifest) -> None:
    """Refuse a private share as a compute input: a worker would get its ciphertext."""
    if signed.manifest.sealed is not None:
        raise UserError(
            f"{signed.cid} is a private share; get it with `p2pshare get` and pass the file "
            "as a compute input instead"
        )
