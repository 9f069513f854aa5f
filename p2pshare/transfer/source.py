"""What the uploader may serve: the node's shares and the verified parts of its downloads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

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

    def read_chunk(self, global_index: int) -> bytes: ...


class ContentSource(Protocol):
    """Everything the uploader reads goes through here; every method may block on disk."""

    def signed_manifest(self, cid: ContentId) -> bytes: ...

    def page(self, cid: ContentId, page_index: int) -> bytes: ...

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield: ...

    def read_chunk(self, cid: ContentId, global_index: int) -> bytes: ...


class LocalContent:
    """Shares from the store, plus downloads registered while they run.

    Errors are the transfer protocol's: UnknownContentError for content this node does
    not hold at all, NotAvailableError for a chunk it cannot serve now (not yet
    downloaded, or its share went stale).
    """

    def __init__(self, shares: ShareStore) -> None:
        self._shares = shares
        self._partial: dict[str, PartialContent] = {}

    def register(self, cid: ContentId, partial: PartialContent) -> None:
        self._partial[str(cid)] = partial

    def unregister(self, cid: ContentId) -> None:
        self._partial.pop(str(cid), None)

    def _unknown(self, cid: ContentId) -> UnknownContentError:
        return UnknownContentError(f"this node does not hold {cid}")

    def signed_manifest(self, cid: ContentId) -> bytes:
        partial = self._partial.get(str(cid))
        if partial is not None:
            return partial.signed_manifest
        try:
            return self._shares.signed_manifest(str(cid)).data
        except UnknownShareError:
            raise self._unknown(cid) from None

    def page(self, cid: ContentId, page_index: int) -> bytes:
        partial = self._partial.get(str(cid))
        data = (
            partial.page(page_index)
            if partial is not None
            else self._shares.catalog.page(str(cid), page_index)
        )
        if data is None:
            raise NotAvailableError(f"hash page {page_index} of {cid} is not held here")
        return data

    def have(self, cid: ContentId, first_chunk: int, count: int) -> Bitfield:
        partial = self._partial.get(str(cid))
        if partial is not None:
            return partial.have(first_chunk, count)
        row = self._shares.catalog.share(str(cid))
        if row is None:
            raise self._unknown(cid)
        if row.stale_reason:
            # Said, not an empty list: the downloader tells its user why it got nothing.
            raise NotAvailableError(f"{cid} cannot be served now: it changed on disk")
        total = self._shares.signed_manifest(str(cid)).manifest.total_chunks
        have = Bitfield(count)
        for offset in range(max(0, min(count, total - first_chunk))):
            have.set(offset)
        return have

    def read_chunk(self, cid: ContentId, global_index: int) -> bytes:
        partial = self._partial.get(str(cid))
        if partial is not None:
            if not partial.has_chunk(global_index):
                raise NotAvailableError(f"chunk {global_index} of {cid} is not downloaded yet")
            return partial.read_chunk(global_index)
        try:
            return self._shares.read_chunk(str(cid), global_index)
        except UnknownShareError:
            raise self._unknown(cid) from None
        except StaleShareError as exc:
            raise NotAvailableError(f"{cid} cannot be served now: it changed on disk") from exc
