"""Hash-list pages: how the chunk hashes of a large share leave the manifest.

The chunk hashes of a whole share, in manifest order, are concatenated and cut into
pages of :data:`HASHES_PER_PAGE` hashes (the last page may be shorter).  The manifest
holds only each page's BLAKE3 hash, so it stays small for any share size, and every
chunk stays checkable as soon as it arrives: page against manifest, chunk against page.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from p2pshare.errors import LocalProtocolError
from p2pshare.proto.chunks import HASH_SIZE

# 512 KiB pages: one page covers 16 GiB of 1 MiB chunks, a fetch costs about half
# a chunk, and a 1 TiB file needs 64 page hashes (about 2 KiB of manifest).
HASHES_PER_PAGE = 16384
PAGE_SIZE = HASHES_PER_PAGE * HASH_SIZE


def page_for_chunk(global_chunk_index: int) -> tuple[int, int]:
    """(page index, position in that page) of a chunk's hash."""
    if global_chunk_index < 0:
        raise LocalProtocolError(f"chunk index cannot be negative: {global_chunk_index}")
    page_index, slot = divmod(global_chunk_index, HASHES_PER_PAGE)
    return page_index, slot


def page_count(total_chunks: int) -> int:
    return -(-total_chunks // HASHES_PER_PAGE)


def split_pages(hashes: bytes) -> list[bytes]:
    """Cut the concatenated chunk hashes of a share into pages."""
    if len(hashes) % HASH_SIZE:
        raise LocalProtocolError("concatenated chunk hashes must be a multiple of 32 bytes")
    return [hashes[start : start + PAGE_SIZE] for start in range(0, len(hashes), PAGE_SIZE)]


def hash_page(page: bytes) -> bytes:
    return blake3.blake3(page).digest()


@dataclass(frozen=True)
class HashPage:
    """A page of chunk hashes already checked against a manifest (see ``verify_page``)."""

    index: int
    hashes: bytes

    @property
    def first_chunk(self) -> int:
        return self.index * HASHES_PER_PAGE

    def __len__(self) -> int:
        return len(self.hashes) // HASH_SIZE

    def chunk_hash(self, global_chunk_index: int) -> bytes:
        """The hash of a chunk this page covers, by its global index."""
        slot = global_chunk_index - self.first_chunk
        if not 0 <= slot < len(self):
            raise LocalProtocolError(f"chunk {global_chunk_index} is not on hash page {self.index}")
        return self.hashes[slot * HASH_SIZE : (slot + 1) * HASH_SIZE]
