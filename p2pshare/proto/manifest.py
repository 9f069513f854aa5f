"""Manifests: what a share holds, and the hashes every chunk is checked against.

A manifest lists the files of a share (sorted by path bytes) with their sizes and
whether they are executable, and the empty directories of the share; the chunk
hashes of all files, in that order, form one sequence indexed by a *global chunk
index*.  Small shares carry that sequence inline, large ones carry the hashes of
its pages (see :mod:`p2pshare.proto.pages`), so the encoded manifest stays under
:data:`MAX_MANIFEST_SIZE` whatever the share's size.  Normative description:
docs/protocol.md, "Manifest".

The executable flag and the empty directories were added to format 1 as optional
parts, present only when set: a share without them encodes exactly as before, so
its content ID did not change.  Of a file's mode only the executable bit travels;
the receiver derives every other bit from its own umask.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Final

from p2pshare.errors import (
    IntegrityError,
    LocalProtocolError,
    P2PShareError,
    RemoteProtocolError,
)
from p2pshare.proto.canonical import (
    Codec,
    Limits,
    expect_bytes,
    expect_int,
    expect_list,
    expect_map,
    expect_str,
    pack,
)
from p2pshare.proto.chunks import (
    DEFAULT_CHUNK_SIZE,
    HASH_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    chunk_count,
    is_valid_chunk_size,
)
from p2pshare.proto.errors import ManifestTooLargeError
from p2pshare.proto.keys import is_small_order_key, peer_id_from_public_key
from p2pshare.proto.pages import (
    HASHES_PER_PAGE,
    PAGE_SIZE,
    HashPage,
    hash_page,
    page_count,
    page_for_chunk,
    split_pages,
)
from p2pshare.proto.paths import MAX_PATH_BYTES, check_file_name, check_tree
from p2pshare.proto.sealed import MAX_ENVELOPE_SIZE, check_sealed_layout

if TYPE_CHECKING:
    from collections.abc import Iterable

MANIFEST_VERSION = 1
# The signed manifest is fetched whole before anything else, from peers not yet
# trusted; 1 MiB bounds that fetch and the memory a decoder may spend on it.
MAX_MANIFEST_SIZE = 1 << 20
# Room left for the signature envelope, so that a body within this bound always
# gives a signed manifest within MAX_MANIFEST_SIZE.
MAX_BODY_SIZE = MAX_MANIFEST_SIZE - 1024
MAX_ENTRIES = 100_000
# Up to 1024 hashes (32 KiB, a 1 GiB file at the default chunk size) travel inside
# the manifest: below that a separate page fetch costs more than it saves.
INLINE_MAX_CHUNKS = 1024
MAX_PAGES = 16384
MAX_TOTAL_CHUNKS = MAX_PAGES * HASHES_PER_PAGE
MAX_FILE_SIZE = (1 << 63) - 1
MAX_CREATED = (1 << 63) - 1
PUBLIC_KEY_SIZE = 32
# Stands in for the publisher when only the size of a manifest matters.
_PLACEHOLDER_KEY = bytes(range(PUBLIC_KEY_SIZE))
_BODY_KEYS = (
    "v",
    "kind",
    "name",
    "publisher",
    "created",
    "chunk_size",
    "entries",
    "hashes",
    "pages",
)
# Present only when the share has empty directories, after every other key.
_DIRS_KEY = "dirs"
# Present only in a private share (p2pshare.proto.sealed), after every other key.
_SEALED_KEY = "sealed"
# The per-entry attribute map, present only when it holds something.
_EXEC_KEY = "exec"


class ShareKind(StrEnum):
    """A single file (one entry, its path a bare file name) or a directory tree."""

    FILE = "file"
    DIRECTORY = "dir"


@dataclass(frozen=True)
class FileEntry:
    """A file to put in a manifest: its path in the share, size and chunk hashes.

    ``hashes`` is the concatenation of the file's 32-byte chunk hashes (as produced by
    :class:`~p2pshare.proto.chunks.ChunkHasher`); bytes rather than a list keep a
    terabyte's million hashes in one object.
    """

    path: str
    size: int
    hashes: bytes
    executable: bool = False


@dataclass(frozen=True)
class Entry:
    """A file as the manifest lists it."""

    path: str
    size: int
    executable: bool = False


@dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk of the share lives: which file, at which offset, how long."""

    global_index: int
    entry_index: int
    path: str
    chunk_index: int
    offset: int
    length: int


@dataclass(frozen=True)
class Manifest:
    """The decoded body of a manifest.

    Obtain one from :func:`build_manifest` or :func:`decode_manifest`, which enforce
    every rule; constructing it directly skips those checks.
    """

    kind: ShareKind
    name: str | None
    publisher: bytes
    created: int
    chunk_size: int
    entries: tuple[Entry, ...]
    inline_hashes: bytes
    page_hashes: tuple[bytes, ...]
    # Directories holding nothing, sorted by path bytes; ones that hold a file or
    # another listed directory are implied by those paths and never listed.
    directories: tuple[str, ...] = ()
    # A private share's envelope (p2pshare.proto.sealed): its entries are ciphertext.
    sealed: bytes | None = None

    @cached_property
    def _chunk_starts(self) -> tuple[int, ...]:
        starts = [0]
        for entry in self.entries:
            starts.append(starts[-1] + chunk_count(entry.size, self.chunk_size))
        return tuple(starts)

    @property
    def total_chunks(self) -> int:
        return self._chunk_starts[-1]

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.entries)

    @property
    def paged(self) -> bool:
        """True when chunk hashes live in hash pages rather than in the manifest."""
        return bool(self.page_hashes)

    @property
    def publisher_peer_id(self) -> str:
        return peer_id_from_public_key(self.publisher)

    def chunks_of(self, entry_index: int) -> range:
        """The global chunk indices of one entry (empty for an empty file)."""
        if not 0 <= entry_index < len(self.entries):
            raise LocalProtocolError(f"entry {entry_index} is outside the manifest")
        return range(self._chunk_starts[entry_index], self._chunk_starts[entry_index + 1])

    def global_chunk_index(self, entry_index: int, chunk_index: int) -> int:
        chunks = self.chunks_of(entry_index)
        if not 0 <= chunk_index < len(chunks):
            raise LocalProtocolError(
                f"chunk {chunk_index} is outside {self.entries[entry_index].path!r}"
            )
        return chunks[chunk_index]

    def locate_chunk(self, global_index: int) -> ChunkLocation:
        if not 0 <= global_index < self.total_chunks:
            raise LocalProtocolError(
                f"chunk {global_index} is outside a share of {self.total_chunks} chunks"
            )
        # Empty files share their start with the next entry; the last entry starting
        # at or before the index is the non-empty one that holds it.
        entry_index = (
            bisect.bisect_right(self._chunk_starts, global_index, hi=len(self.entries)) - 1
        )
        entry = self.entries[entry_index]
        chunk_index = global_index - self._chunk_starts[entry_index]
        offset = chunk_index * self.chunk_size
        return ChunkLocation(
            global_index=global_index,
            entry_index=entry_index,
            path=entry.path,
            chunk_index=chunk_index,
            offset=offset,
            length=min(self.chunk_size, entry.size - offset),
        )


@dataclass(frozen=True)
class BuiltManifest:
    """A new manifest and the hash pages its page hashes name (empty when inline)."""

    manifest: Manifest
    pages: tuple[bytes, ...]


def _check_manifest(
    manifest: Manifest, fail: type[P2PShareError], too_large: type[P2PShareError]
) -> None:
    """Every rule a manifest obeys, raising ``fail`` or ``too_large`` (paths: UnsafePathError)."""
    _check_header(manifest, fail)
    _check_entries(manifest, fail, too_large)
    _check_hash_layout(manifest, fail, too_large)
    if manifest.sealed is not None:
        check_sealed_layout(
            manifest.kind is ShareKind.DIRECTORY and manifest.name is None,
            [(entry.path, entry.size, entry.executable) for entry in manifest.entries],
            manifest.directories,
            manifest.chunk_size,
            manifest.sealed,
            fail,
        )


def _check_header(manifest: Manifest, fail: type[P2PShareError]) -> None:
    if not is_valid_chunk_size(manifest.chunk_size):
        raise fail(
            f"chunk size {manifest.chunk_size} is not a power of two between "
            f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )
    if len(manifest.publisher) != PUBLIC_KEY_SIZE:
        raise fail("the publisher key must be a 32-byte Ed25519 public key")
    if is_small_order_key(manifest.publisher):
        raise fail("the publisher key is a small-order Ed25519 point, which has no owner")
    if not 0 <= manifest.created <= MAX_CREATED:
        raise fail(f"creation time {manifest.created} is out of range")
    if manifest.name is not None:
        check_file_name(manifest.name)


def _check_entries(
    manifest: Manifest, fail: type[P2PShareError], too_large: type[P2PShareError]
) -> None:
    if len(manifest.entries) + len(manifest.directories) > MAX_ENTRIES:
        raise too_large(f"a manifest lists at most {MAX_ENTRIES} files and empty directories")
    if manifest.kind is ShareKind.FILE and (
        len(manifest.entries) != 1 or "/" in manifest.entries[0].path or manifest.directories
    ):
        raise fail(
            "a single-file share has exactly one entry, named without a directory, "
            "and no directories"
        )
    check_tree((entry.path for entry in manifest.entries), manifest.directories)
    for paths, what in (
        ([entry.path for entry in manifest.entries], "manifest entries"),
        (list(manifest.directories), "empty directories"),
    ):
        encoded = [path.encode("utf-8") for path in paths]
        if any(a >= b for a, b in itertools.pairwise(encoded)):
            raise fail(f"{what} must be sorted by path bytes")
    for entry in manifest.entries:
        if not 0 <= entry.size <= MAX_FILE_SIZE:
            raise fail(f"size {entry.size} of {entry.path!r} is out of range")


def _check_hash_layout(
    manifest: Manifest, fail: type[P2PShareError], too_large: type[P2PShareError]
) -> None:
    total = manifest.total_chunks
    if total > MAX_TOTAL_CHUNKS:
        raise too_large(f"a share has at most {MAX_TOTAL_CHUNKS} chunks, this one {total}")
    if total <= INLINE_MAX_CHUNKS:
        if manifest.page_hashes or len(manifest.inline_hashes) != total * HASH_SIZE:
            raise fail(f"a share of {total} chunks must carry exactly its {total} hashes inline")
    elif manifest.inline_hashes or len(manifest.page_hashes) != page_count(total):
        raise fail(f"a share of {total} chunks must carry exactly {page_count(total)} page hashes")
    if any(len(page) != HASH_SIZE for page in manifest.page_hashes):
        raise fail("every page hash has 32 bytes")


def _count_chunks(files: list[tuple[str, int]], chunk_size: int, directories: int = 0) -> int:
    """The checks that need only sizes, so a share is refused before anyone hashes it."""
    if len(files) + directories > MAX_ENTRIES:
        raise ManifestTooLargeError(
            f"this share has {len(files)} files and {directories} empty directories, more "
            f"than the {MAX_ENTRIES} a manifest can list; share its subdirectories separately"
        )
    if not is_valid_chunk_size(chunk_size):
        raise LocalProtocolError(f"chunk size {chunk_size} is not allowed")
    for path, size in files:
        if not 0 <= size <= MAX_FILE_SIZE:
            raise LocalProtocolError(f"size {size} of {path!r} is out of range")
    total = sum(chunk_count(size, chunk_size) for _path, size in files)
    if total > MAX_TOTAL_CHUNKS:
        raise ManifestTooLargeError(
            f"this share has {total} chunks, more than the {MAX_TOTAL_CHUNKS} a manifest can "
            "describe; share it in parts or with a larger chunk size"
        )
    return total


def _path_order(path: str) -> bytes:
    # surrogatepass: an unencodable path must reach check_tree, which explains the refusal.
    return path.encode("utf-8", "surrogatepass")


def _assemble(manifest: Manifest) -> Manifest:
    """Check a manifest made here, including the encoded size no receiver would exceed."""
    _check_manifest(manifest, LocalProtocolError, ManifestTooLargeError)
    size = len(encode_manifest(manifest))
    if size > MAX_BODY_SIZE:
        raise ManifestTooLargeError(
            f"the manifest of these {len(manifest.entries)} files would take {size} bytes, "
            f"more than the {MAX_MANIFEST_SIZE} allowed; share fewer files at once (each "
            "subdirectory separately, for example)"
        )
    return manifest


def build_manifest(
    files: Iterable[FileEntry],
    *,
    kind: ShareKind,
    publisher: bytes,
    created: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    name: str | None = None,
    directories: Iterable[str] = (),
    sealed: bytes | None = None,
) -> BuiltManifest:
    """Describe a share; ``created`` is the caller's clock in whole Unix seconds.

    ``directories`` are the share's empty directories (none of them may hold a file
    or another of them).  Raises UnsafePathError for a path the receivers would
    refuse, ManifestTooLargeError when the share does not fit the limits,
    LocalProtocolError for inconsistent input.
    """
    files = sorted(files, key=lambda file: _path_order(file.path))
    empty = tuple(sorted(directories, key=_path_order))
    _count_chunks([(file.path, file.size) for file in files], chunk_size, len(empty))
    for file in files:
        expected = chunk_count(file.size, chunk_size)
        if len(file.hashes) != expected * HASH_SIZE:
            raise LocalProtocolError(
                f"{file.path!r} has {len(file.hashes)} bytes of chunk hashes, "
                f"expected {expected} hashes of {HASH_SIZE} bytes"
            )
    hashes = b"".join(file.hashes for file in files)
    pages = [] if len(hashes) <= INLINE_MAX_CHUNKS * HASH_SIZE else split_pages(hashes)
    manifest = Manifest(
        kind=kind,
        name=name,
        publisher=publisher,
        created=created,
        chunk_size=chunk_size,
        entries=tuple(Entry(file.path, file.size, file.executable) for file in files),
        inline_hashes=b"" if pages else hashes,
        page_hashes=tuple(hash_page(page) for page in pages),
        directories=empty,
        sealed=sealed,
    )
    return BuiltManifest(_assemble(manifest), tuple(pages))


def check_shareable(
    files: Iterable[tuple[str, int]],
    *,
    kind: ShareKind,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    name: str | None = None,
    directories: Iterable[str] = (),
    executable: Iterable[str] = (),
) -> None:
    """Raise what :func:`build_manifest` would for these (path, size) pairs, before hashing.

    Lets the share scanner refuse a tree at once instead of after reading terabytes.
    Hashes have a fixed size, so placeholders give the real manifest size; the paths
    in ``executable`` are flagged, since each flag takes room too.
    """
    files = sorted(files, key=lambda file: _path_order(file[0]))
    empty = tuple(sorted(directories, key=_path_order))
    total = _count_chunks(files, chunk_size, len(empty))
    flagged = frozenset(executable)
    paged = total > INLINE_MAX_CHUNKS
    _assemble(
        Manifest(
            kind=kind,
            name=name,
            publisher=_PLACEHOLDER_KEY,
            created=0,
            chunk_size=chunk_size,
            entries=tuple(Entry(path, size, path in flagged) for path, size in files),
            inline_hashes=b"" if paged else bytes(total * HASH_SIZE),
            page_hashes=(bytes(HASH_SIZE),) * page_count(total) if paged else (),
            directories=empty,
        )
    )


def _encode_entry(entry: Entry) -> list[object]:
    if entry.executable:
        return [entry.path, entry.size, {_EXEC_KEY: True}]
    return [entry.path, entry.size]


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical body bytes: a map with the keys of ``_BODY_KEYS`` in that order,
    then ``dirs`` when there are empty directories."""
    body: dict[str, object] = {
        "v": MANIFEST_VERSION,
        "kind": manifest.kind.value,
        "name": manifest.name,
        "publisher": manifest.publisher,
        "created": manifest.created,
        "chunk_size": manifest.chunk_size,
        "entries": [_encode_entry(entry) for entry in manifest.entries],
        "hashes": manifest.inline_hashes,
        "pages": list(manifest.page_hashes),
    }
    if manifest.directories:
        body[_DIRS_KEY] = list(manifest.directories)
    if manifest.sealed is not None:
        body[_SEALED_KEY] = manifest.sealed
    return pack(body)


def decode_manifest(data: bytes) -> Manifest:
    """Decode untrusted body bytes; raise RemoteProtocolError unless valid and canonical."""
    return MANIFEST_BODY.decode(data)


def _parse_manifest(value: object) -> Manifest:
    if isinstance(value, dict) and "v" in value and value["v"] != MANIFEST_VERSION:
        raise RemoteProtocolError(
            f"manifest version {value['v']!r} is not supported "
            f"(this p2pshare reads version {MANIFEST_VERSION})"
        )
    with_dirs = isinstance(value, dict) and _DIRS_KEY in value
    with_sealed = isinstance(value, dict) and _SEALED_KEY in value
    keys = (
        *_BODY_KEYS,
        *((_DIRS_KEY,) if with_dirs else ()),
        *((_SEALED_KEY,) if with_sealed else ()),
    )
    fields = expect_map(value, keys, what="manifest")
    version, kind, name, publisher, created, chunk_size, entries, hashes, pages = fields[:9]
    sealed = (
        expect_bytes(fields[-1], what="sealed envelope", max_len=MAX_ENVELOPE_SIZE)
        if with_sealed
        else None
    )
    dirs = (
        expect_list(fields[9], what="empty directories", max_len=MAX_ENTRIES) if with_dirs else []
    )
    if with_dirs and not dirs:
        raise RemoteProtocolError("manifest key 'dirs' is present but empty; omit it instead")
    expect_int(version, what="manifest version", low=MANIFEST_VERSION, high=MANIFEST_VERSION)
    try:
        share_kind = ShareKind(expect_str(kind, what="manifest kind"))
    except ValueError:
        raise RemoteProtocolError(f"manifest kind {kind!r} is unknown") from None
    manifest = Manifest(
        kind=share_kind,
        name=None if name is None else expect_str(name, what="manifest name"),
        publisher=expect_bytes(
            publisher, what="publisher key", length=PUBLIC_KEY_SIZE, max_len=PUBLIC_KEY_SIZE
        ),
        created=expect_int(created, what="creation time", low=0, high=MAX_CREATED),
        chunk_size=expect_int(
            chunk_size, what="chunk size", low=MIN_CHUNK_SIZE, high=MAX_CHUNK_SIZE
        ),
        entries=tuple(
            _parse_entry(entry)
            for entry in expect_list(entries, what="manifest entries", max_len=MAX_ENTRIES)
        ),
        inline_hashes=expect_bytes(
            hashes, what="inline hashes", max_len=INLINE_MAX_CHUNKS * HASH_SIZE
        ),
        page_hashes=tuple(
            expect_bytes(page, what="page hash", length=HASH_SIZE, max_len=HASH_SIZE)
            for page in expect_list(pages, what="page hashes", max_len=MAX_PAGES)
        ),
        directories=tuple(expect_str(path, what="empty directory path") for path in dirs),
        sealed=sealed,
    )
    _check_manifest(manifest, RemoteProtocolError, RemoteProtocolError)
    return manifest


def _parse_entry(value: object) -> Entry:
    fields = expect_list(value, what="manifest entry", max_len=3)
    if len(fields) not in (2, 3):
        raise RemoteProtocolError(f"manifest entry must have 2 or 3 elements, not {len(fields)}")
    path, size = fields[:2]
    if len(fields) == 3:
        # The attribute map exists only to say "executable": anything else in it
        # (false, an unknown key, nothing at all) is a second encoding of a plain file.
        (flag,) = expect_map(fields[2], (_EXEC_KEY,), what="manifest entry attributes")
        if flag is not True:
            raise RemoteProtocolError("entry attribute 'exec' must be true; omit it otherwise")
    return Entry(
        path=expect_str(path, what="entry path"),
        size=expect_int(size, what="entry size", low=0, high=MAX_FILE_SIZE),
        executable=len(fields) == 3,
    )


def verify_page(manifest: Manifest, page_index: int, page: bytes) -> HashPage:
    """Check a fetched hash page against the manifest; IntegrityError if it does not match."""
    if not 0 <= page_index < len(manifest.page_hashes):
        raise LocalProtocolError(f"the manifest has no hash page {page_index}")
    expected_length = min(PAGE_SIZE, manifest.total_chunks * HASH_SIZE - page_index * PAGE_SIZE)
    if len(page) != expected_length:
        raise IntegrityError(
            f"hash page {page_index} has {len(page)} bytes, the manifest says {expected_length}"
        )
    if hash_page(page) != manifest.page_hashes[page_index]:
        raise IntegrityError(f"hash page {page_index} does not match its hash in the manifest")
    return HashPage(page_index, bytes(page))


def expected_chunk_hash(
    manifest: Manifest, global_index: int, page: HashPage | None = None
) -> bytes:
    """The hash chunk ``global_index`` must have.

    A paged manifest needs the verified page that holds the chunk's hash
    (``page_for_chunk(global_index)[0]``); an inline one needs none.
    """
    if not 0 <= global_index < manifest.total_chunks:
        raise LocalProtocolError(
            f"chunk {global_index} is outside a share of {manifest.total_chunks} chunks"
        )
    if not manifest.paged:
        return manifest.inline_hashes[global_index * HASH_SIZE : (global_index + 1) * HASH_SIZE]
    page_index, _slot = page_for_chunk(global_index)
    if page is None or page.index != page_index:
        raise LocalProtocolError(f"chunk {global_index} needs hash page {page_index}")
    return page.chunk_hash(global_index)


MANIFEST_BODY: Final = Codec(
    what="manifest",
    encode=encode_manifest,
    parse=_parse_manifest,
    limits=Limits(
        max_size=MAX_BODY_SIZE,
        max_str_len=MAX_PATH_BYTES,
        max_bin_len=MAX_ENVELOPE_SIZE,
        max_array_len=MAX_ENTRIES,
        max_map_len=len(_BODY_KEYS) + 2,
    ),
)
