"""Which chunks of a shared file were hashed since the file last changed.

Every chunk a node serves from its shares is checked against the signed manifest.
Hashing it again on every read cost about a fifth of the uploader's CPU in a 1 GiB
`get` (docs/benchmarks.md), so a chunk hashed once is trusted for as long as its file
keeps the same identity: device, inode, size, mtime and ctime.  No user can set a
ctime back (``utime`` sets it to now), so an edit that restores the mtime still shows,
and so does a file replaced by another with the same size and mtime.

The kernel stamps files from a coarse clock: an edit in the same clock tick as the
file's last change could leave every field equal.  A file whose ctime is less than
``RACY_NS`` older than the moment its bytes began to be read is never trusted
(git calls such index entries "racy"); its chunks are hashed on every read until it
has settled.  Nothing is kept across restarts.

Reads run in worker threads, so one lock guards the table.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from p2pshare.proto.bitfield import Bitfield

if TYPE_CHECKING:
    import os

# Far above a kernel clock tick (1-10 ms), far below the time between writing a file
# and serving it.
RACY_NS: Final = 100_000_000


@dataclass(frozen=True)
class FileIdentity:
    """What changes whenever a file's bytes can have changed."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def settled_at(self, read_at_ns: int) -> bool:
        """Would any edit from ``read_at_ns`` on change this identity?

        An edit at time t gets a ctime of at least t minus one clock tick.
        """
        return self.ctime_ns < read_at_ns - RACY_NS


@dataclass
class _CheckedFile:
    identity: FileIdentity
    chunks: Bitfield


class CheckedChunks:
    """Per share and file entry: the file's identity and the chunks hashed under it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[tuple[str, int], _CheckedFile] = {}

    def trusted(self, cid: str, entry_index: int, identity: FileIdentity, chunk: int) -> bool:
        with self._lock:
            checked = self._files.get((cid, entry_index))
            return checked is not None and checked.identity == identity and checked.chunks[chunk]

    def record(
        self,
        cid: str,
        entry_index: int,
        identity: FileIdentity,
        chunk: int,
        chunk_count: int,
        *,
        read_at_ns: int,
    ) -> None:
        """Chunk ``chunk`` of the entry, read from ``read_at_ns`` on, matched its hash."""
        if not identity.settled_at(read_at_ns):
            return
        with self._lock:
            checked = self._files.get((cid, entry_index))
            if checked is None or checked.identity != identity:
                checked = _CheckedFile(identity, Bitfield(chunk_count))
                self._files[(cid, entry_index)] = checked
            checked.chunks.set(chunk)

    def record_file(
        self,
        cid: str,
        entry_index: int,
        identity: FileIdentity,
        chunk_count: int,
        *,
        read_at_ns: int,
    ) -> None:
        """The whole entry was read from ``read_at_ns`` on and hashed (when it was shared)."""
        if not identity.settled_at(read_at_ns):
            return
        with self._lock:
            self._files[(cid, entry_index)] = _CheckedFile(identity, Bitfield.full(chunk_count))

    def forget(self, cid: str) -> None:
        with self._lock:
            for key in [k for k in self._files if k[0] == cid]:
                del self._files[key]
