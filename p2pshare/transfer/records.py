"""Where a download keeps its record, what it reports when it ends, and what it serves
while it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from p2pshare.store.catalog import DownloadRow

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.proto.bitfield import Bitfield
    from p2pshare.proto.signed_manifest import SignedManifest
    from p2pshare.store.lifecycle import DownloadState
    from p2pshare.transfer.downloader import Transfer


class DownloadRecords(Protocol):
    """Where a download keeps its verified-chunk record (the catalog, for ``get``)."""

    def download(self, cid: str) -> DownloadRow | None: ...

    def save_download(self, row: DownloadRow) -> None: ...


class MemoryRecords:
    """Records that last as long as the download: for content the node fetches for
    itself (a compute job's), which is never resumed and must not touch a ``get``'s."""

    def __init__(self) -> None:
        self._rows: dict[str, DownloadRow] = {}

    def download(self, cid: str) -> DownloadRow | None:
        return self._rows.get(cid)

    def save_download(self, row: DownloadRow) -> None:
        self._rows[row.cid] = row


@dataclass
class DownloadReport:
    cid: str
    destination: str
    size: int
    files: int
    chunks: int
    resumed_chunks: int = 0
    requested_bytes: int = 0
    received_bytes: int = 0
    elapsed_s: float = 0.0
    peers: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    chunks_from: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "destination": self.destination,
            "size": self.size,
            "files": self.files,
            "chunks": self.chunks,
            "resumed_chunks": self.resumed_chunks,
            "requested_bytes": self.requested_bytes,
            "received_bytes": self.received_bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "peers": self.peers,
            "banned": self.banned,
            "chunks_from": self.chunks_from,
        }


def progress_row(
    cid: object, dest: Path, signed: SignedManifest, verified: Bitfield, state: DownloadState
) -> DownloadRow:
    """The verified-chunk record of a download, as of now."""
    return DownloadRow(
        str(cid), str(dest), signed.data, verified.to_bytes(), state, int(time.time())
    )


class PartialContent:
    """A running download as the uploader sees it: only verified chunks."""

    def __init__(self, transfer: Transfer) -> None:
        self._transfer = transfer

    @property
    def signed_manifest(self) -> bytes:
        return self._transfer.signed.data

    def page(self, page_index: int) -> bytes | None:
        page = self._transfer.pages.get(page_index)
        return None if page is None else page.hashes

    def has_chunk(self, global_index: int) -> bool:
        return self._transfer.durable[global_index]

    def have(self, first_chunk: int, count: int) -> Bitfield:
        # ``durable`` is replaced at each persist, never changed in place, so this
        # worker-thread read sees one consistent snapshot.
        return self._transfer.durable.slice(first_chunk, count)

    def read_chunk_into(self, global_index: int, out: bytearray, *, wait: bool = True) -> int:
        return self._transfer.output.read_chunk_into(global_index, out, wait=wait)
