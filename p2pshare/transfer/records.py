"""Where a download keeps its record, and what it reports when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from p2pshare.store.catalog import DownloadRow


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
