"""What the uploader may serve: the node's shares and the verified parts of its downloads."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from p2pshare.errors import WouldBlockError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.transfer import NotAvailableError, UnknownContentError
from p2pshare.store.shares import StaleShareError, UnknownShareError

if TYPE_CHECKING:
    from p2pshare.proto.cid import ContentId
    from p2pshare.store.shares import ShareStore


class PartialContent(Protocol):
    """A download in progress, as the uploader sees it (only verified chunks are served)."""

    @property
    def signed_manifest(self) -> bytes: ...

    def page(self, page_index: int) -> bytes | None: ...

    def has_chunk(self, global_index: int) -> bool: ...

    def have(self, first_chunk: int, count: int) -> Bitfield: ...

    def read_chunk_into(self, global_index: int, out: bytearray, *, wait: bool = True) -> int: ...


class ContentSource(Protocol):
    """Everything the uploader reads goes through here; every method may block on disk."""

    def signed_manifest(self, cid: ContentId) -> bytes: ...

    def page(self, cid: ContentId, page_index: int) -> bytes: ...

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield: ...

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        """Read chunk ``global_index`` into ``out`` (at least a chunk long); its length.
        ``wait=False``: raise WouldBlockError rather than wait for the disk or a lock
        (the uploader then makes the call again in a worker thread)."""
        ...


class StoredContent:
    """The node's shares alone, never a download in progress: complete content only.

    A ``get`` of content this node already holds is copied from here
    (p2pshare.transfer.local).
    """

    def __init__(self, shares: ShareStore) -> None:
        self._shares = shares

    def holds(self, cid: ContentId) -> bool:
        """Whether ``cid`` is shared here and not known to have changed on disk."""
        row = self._shares.catalog.share(str(cid))
        return row is not None and not row.stale_reason

    def signed_manifest(self, cid: ContentId) -> bytes:
        try:
            return self._shares.signed_manifest(str(cid)).data
        except UnknownShareError:
            raise _unknown(cid) from None

    def page(self, cid: ContentId, page_index: int) -> bytes:
        data = self._shares.catalog.page(str(cid), page_index)
        if data is None:
            raise NotAvailableError(f"hash page {page_index} of {cid} is not held here")
        return data

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        row = self._shares.catalog.share(str(cid))
        if row is None:
            raise _unknown(cid)
        if row.stale_reason:
            # Said, not an empty list: the downloader tells its user why it got nothing.
            raise NotAvailableError(f"{cid} cannot be served now: it changed on disk")
        total = self._shares.signed_manifest(str(cid)).manifest.total_chunks
        have = Bitfield(count)
        for offset in range(max(0, min(count, total - first_chunk))):
            have.set(offset)
        return have

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        try:
            return self._shares.read_chunk_into(str(cid), global_index, out, wait=wait)
        except UnknownShareError:
            raise _unknown(cid) from None
        except StaleShareError as exc:
            raise NotAvailableError(f"{cid} cannot be served now: it changed on disk") from exc


class LocalContent:
    """Shares from the store, plus downloads registered while they run.

    Errors are the transfer protocol's: UnknownContentError for content this node does
    not hold at all, NotAvailableError for a chunk it cannot serve now (not yet
    downloaded, or its share went stale).
    """

    def __init__(self, shares: ShareStore) -> None:
        self._shares = shares
        self.stored = StoredContent(shares)
        self._partial: dict[str, PartialContent] = {}
        # Chunks of job outputs sent to their requester, until all of them were; the
        # uploader reads chunks in worker threads.
        self._sending: dict[tuple[str, str], set[int]] = {}
        self._sending_lock = threading.Lock()

    def register(self, cid: ContentId, partial: PartialContent) -> None:
        self._partial[str(cid)] = partial

    def unregister(self, cid: ContentId) -> None:
        self._partial.pop(str(cid), None)

    def signed_manifest(self, cid: ContentId) -> bytes:
        partial = self._partial.get(str(cid))
        if partial is not None:
            return partial.signed_manifest
        return self.stored.signed_manifest(cid)

    def page(self, cid: ContentId, page_index: int) -> bytes:
        partial = self._partial.get(str(cid))
        if partial is None:
            return self.stored.page(cid, page_index)
        data = partial.page(page_index)
        if data is None:
            raise NotAvailableError(f"hash page {page_index} of {cid} is not held here")
        return data

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        partial = self._partial.get(str(cid))
        if partial is not None:
            return partial.have(first_chunk, count)
        return self.stored.have(cid, first_chunk, count)

    def for_peer(self, peer: str) -> PeerContent:
        """What ``peer`` may read: everything but the job outputs of other requesters."""
        return PeerContent(self, peer)

    def requesters(self, cid: ContentId) -> frozenset[str]:
        """The only peers ``cid`` may be served to; empty when anyone may have it."""
        if str(cid) in self._partial:
            return frozenset()
        return self._shares.catalog.job_output_requesters(str(cid))

    def refuses(self, cid: ContentId, peer: str) -> bool:
        """Revoked content, and a private share of ours kept for its recipients only."""
        key = str(cid)
        catalog = self._shares.catalog
        if catalog.is_revoked(key):
            return True
        private = catalog.private_share(key)
        return (
            private is not None and not private.anyone_may_seed and peer not in private.recipients
        )

    def record_sent(self, cid: ContentId, global_index: int, requester: str) -> None:
        """Note a chunk of a job output sent to its requester; all of them = fetched."""
        key = (str(cid), requester)
        total = self._shares.signed_manifest(str(cid)).manifest.total_chunks
        with self._sending_lock:
            sent = self._sending.setdefault(key, set())
            sent.add(global_index)
            if len(sent) < total:
                return
            del self._sending[key]
        self._shares.catalog.set_job_output_fetched(str(cid), requester)

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        partial = self._partial.get(str(cid))
        if partial is None:
            return self.stored.read_chunk_into(cid, global_index, out, wait=wait)
        if not partial.has_chunk(global_index):
            raise NotAvailableError(f"chunk {global_index} of {cid} is not downloaded yet")
        return partial.read_chunk_into(global_index, out, wait=wait)


class PeerContent:
    """LocalContent as one peer may see it (a ContentSource for that peer's streams).

    A job output asked for by anyone but its requester is answered exactly as content
    this node does not hold, so a stranger cannot even learn that it exists; so is
    revoked content, and a private share kept for its recipients asked for by another.
    """

    def __init__(self, local: LocalContent, peer: str) -> None:
        self._local = local
        self._peer = peer

    def _check(self, cid: ContentId) -> bool:
        """Raise as for unknown content if the peer may not have ``cid``; True for a job
        output (of this peer)."""
        requesters = self._local.requesters(cid)
        if (requesters and self._peer not in requesters) or self._local.refuses(cid, self._peer):
            raise _unknown(cid)
        return bool(requesters)

    def signed_manifest(self, cid: ContentId) -> bytes:
        self._check(cid)
        return self._local.signed_manifest(cid)

    def page(self, cid: ContentId, page_index: int) -> bytes:
        self._check(cid)
        return self._local.page(cid, page_index)

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        self._check(cid)
        return self._local.have(cid, first_chunk, count)

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        job_output = self._check(cid)
        if job_output and not wait:
            raise WouldBlockError("a job output's chunks are counted in the catalog")
        length = self._local.read_chunk_into(cid, global_index, out, wait=wait)
        if job_output:
            self._local.record_sent(cid, global_index, self._peer)
        return length


def _unknown(cid: ContentId) -> UnknownContentError:
    return UnknownContentError(f"this node does not hold {cid}")
