"""A download's streams to its providers: dialing, attaching and dropping them.

Trio and IO only; what to dial, and when, is the Swarm's (transfer/swarm.py).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import TYPE_CHECKING

import trio

from p2pshare.errors import RemoteError, UserError
from p2pshare.transfer.peer import PeerLink
from p2pshare.transfer.swarm import CONNECT_TIMEOUT, MAX_PROVIDERS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, ItemsView

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.cid import ContentId
    from p2pshare.transfer.swarm import Source, Swarm

    OpenStream = Callable[[Source], Awaitable[ByteStream]]
    # Called with how many providers the lookup should go on asking for, and the peers
    # it should ask besides those the DHT knows (the providers linked now).
    FindSources = Callable[[int, list[str]], Awaitable[list[Source]]]

log = logging.getLogger(__name__)
# A discarded stream gets this long to close before it is left to the peer.
CLOSE_TIMEOUT = 5.0


class Links:
    """The live link of each provider; links run in ``nursery``."""

    def __init__(
        self,
        *,
        cid: ContentId,
        nursery: trio.Nursery,
        swarm: Swarm,
        open_stream: OpenStream,
        find_sources: FindSources,
    ) -> None:
        self.cid = cid
        self.swarm = swarm
        self._nursery = nursery
        self._open_stream = open_stream
        self._find_sources = find_sources
        self._links: dict[str, PeerLink] = {}
        # Called with each peer whose link was dropped (the transfer stops using it).
        self.on_drop: Callable[[str], None] = lambda _peer: None

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, peer: str) -> bool:
        return peer in self._links

    def items(self) -> ItemsView[str, PeerLink]:
        return self._links.items()

    async def lookup(self, want: int) -> list[Source]:
        """The hinted providers (a ticket's provider that could not be reached at first is
        tried again), then those found now, asking on until ``want`` are known.

        The providers linked now are asked too: they hold the content, so they are
        likely to know its other providers, and a downloader whose only libp2p peer was
        the seeder lost it from its routing table when that connection closed, and then
        asked nobody, lookup after lookup (bench/downloaders.py).

        The lookup is never cut short but by CONNECT_TIMEOUT: it dials peers itself,
        and a dial cancelled half way leaves py-libp2p unable to dial that peer again
        at once.  A failing lookup finds nothing; it must not end a download that runs.
        """
        found = list(self.swarm.hints.values())
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                found += await self._find_sources(want, list(self._links))
        except Exception:
            log.warning("provider lookup for %s failed", self.cid, exc_info=True)
        return found

    async def dial(self, sources: list[Source]) -> None:
        async with trio.open_nursery() as dialing:
            for source in sources[:MAX_PROVIDERS]:
                dialing.start_soon(self.attach, source)

    async def attach(self, source: Source) -> PeerLink | None:
        """Open a stream to ``source`` and run its link; None if it cannot be reached."""
        stream = None
        # py-libp2p now and then fails a new stream's handshake on a healthy
        # connection: a second try saves the provider.
        for attempt in range(2):
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await self._open_stream(source)
                break
            except (trio.TooSlowError, UserError, RemoteError) as exc:
                log.info("provider %s unreachable (try %d): %s", source.peer_id, attempt, exc)
                await trio.sleep(0.2)
        if stream is None:
            self.swarm.on_unreachable(source.peer_id)
            return None
        link = PeerLink(stream, source.peer_id, max_chunk_size=1 << 24)
        try:
            await self._nursery.start(self._run_link, link)
        except (RemoteError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The stream broke before our HELLO was out (an overloaded peer resets it).
            log.info("provider %s reset the new stream: %s", source.peer_id, exc)
            await self._close(link)
            return None
        except BaseException:
            await self._close(link)
            raise
        self._links[source.peer_id] = link
        return link

    @staticmethod
    async def _run_link(
        link: PeerLink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await link.run(task_status=task_status)
        except trio.BrokenResourceError:
            log.info("stream to %s broke", link.peer_id)

    def drop(
        self, peer: str, reason: str, why: str, *, ban: bool = False, refused: bool = False
    ) -> None:
        """Stop using ``peer``'s link; a banned peer, or one that refused the content, is
        never asked again, any other may be dialed again (the Swarm decides).  ``reason``
        goes to the log, ``why`` (a failures.* phrase) into the error the download may
        end with."""
        link = self._links.pop(peer, None)
        last = link is not None and not self._links
        self.swarm.on_drop(peer, why, ban=ban, refused=refused, last=last)
        if link is None:
            return
        log.info("dropping provider %s: %s", peer, reason)
        self.on_drop(peer)
        self._nursery.start_soon(self._close, link)

    @staticmethod
    async def _close(link: PeerLink) -> None:
        # The stream is discarded: failing to close it cleanly changes nothing.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLOSE_TIMEOUT),
            suppress(RemoteError, trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await link.aclose()

    async def close_all(self) -> None:
        for link in list(self._links.values()):
            await link.aclose()
