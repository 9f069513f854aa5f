"""The chunk plan: files cut into fixed-size chunks, each named by its BLAKE3 hash.

Chunks never span files: chunk ``i`` of a file covers bytes
``[i * chunk_size, min((i + 1) * chunk_size, size))``, so an empty file has no
chunks and only a file's last chunk may be short.  See docs/protocol.md, "Chunk plan".
"""

from __future__ import annotations

from typing import TypeAlias

import blake3

from p2pshare.errors import IntegrityError, LocalProtocolError

BytesLike: TypeAlias = bytes | bytearray | memoryview

# 1 MiB keeps the hash list at 32 bytes per MiB (a 1 TiB file needs 64 hash pages)
# and matches the ~1 MiB frames that keep per-byte Python work near zero on the
# bulk data path (docs/protocol.md, "Chunk plan").
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 14
MAX_CHUNK_SIZE = 1 << 24
HASH_SIZE = 32


def is_valid_chunk_size(chunk_size: int) -> bool:
    """A power of two from 16 KiB to 16 MiB."""
    return MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0


def _require_chunk_size(chunk_size: int) -> None:
    if not is_valid_chunk_size(chunk_size):
        raise LocalProtocolError(
            f"chunk size {chunk_size} is not a power of two between "
            f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )


def chunk_count(size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """How many chunks a file of ``size`` bytes has (zero for an empty file)."""
    _require_chunk_size(chunk_size)
    if size < 0:
        raise LocalProtocolError(f"a file size cannot be negative: {size}")
    return -(-size // chunk_size)


def chunk_range(size: int, index: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of a file of ``size`` bytes."""
    count = chunk_count(size, chunk_size)
    if not 0 <= index < count:
        raise LocalProtocolError(f"chunk {index} is outside a file of {count} chunks")
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def hash_chunk(data: BytesLike) -> bytes:
    """The 32-byte BLAKE3 hash that names a chunk."""
    return blake3.blake3(data).digest()


def verify_chunk(expected_hash: bytes, data: BytesLike) -> None:
    """Raise IntegrityError unless ``data`` is the chunk named by ``expected_hash``."""
    if hash_chunk(data) != expected_hash:
        raise IntegrityError("chunk does not match its hash in the manifest")


def hash_chunks(data: BytesLike, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """The chunk hashes of a whole file held in memory."""
    hasher = ChunkHasher(chunk_size)
    return hasher.update(data) + hasher.finish()


class ChunkHasher:
    """Chunk hashes of a file fed in pieces of any size, e.g. as it is read from disk.

    Each call returns the hashes of the chunks it completed; :meth:`finish` returns
    the hash of the short last chunk, if any.  Feeding a file whole or in any split
    gives the same hashes as :func:`hash_chunks`.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _require_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        self._hasher = blake3.blake3()
        self._filled = 0
        self._bytes_hashed = 0
        self._finished = False

    @property
    def bytes_hashed(self) -> int:
        return self._bytes_hashed

    def update(self, data: BytesLike) -> list[bytes]:
        if self._finished:
            raise LocalProtocolError("ChunkHasher.update() called after finish()")
        # Slicing a memoryview copies nothing; the caller's buffer goes to BLAKE3 as is.
        view = memoryview(data).cast("B")
        done: list[bytes] = []
        pos, end = 0, len(view)
        while pos < end:
            take = min(self._chunk_size - self._filled, end - pos)
            self._hasher.update(view[pos : pos + take])
            pos += take
            self._filled += take
            if self._filled == self._chunk_size:
                done.append(self._hasher.digest())
                self._hasher.reset()
                self._filled = 0
        self._bytes_hashed += end
        return done

    def finish(self) -> list[bytes]:
        if self._finished:
            raise LocalProtocolError("ChunkHasher.finish() called twice")
        self._finished = True
        return [self._hasher.digest()] if self._filled else []
