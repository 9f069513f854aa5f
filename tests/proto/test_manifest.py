"""Manifest model: building, canonical encoding, chunk addressing, hash pages, limits."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError
from p2pshare.proto.chunks import HASH_SIZE, MIN_CHUNK_SIZE, hash_chunk, hash_chunks
from p2pshare.proto.errors import ManifestTooLargeError, UnsafePathError
from p2pshare.proto.manifest import (
    INLINE_MAX_CHUNKS,
    MAX_ENTRIES,
    MAX_MANIFEST_SIZE,
    MAX_TOTAL_CHUNKS,
    FileEntry,
    ShareKind,
    build_manifest,
    check_shareable,
    decode_manifest,
    encode_manifest,
    expected_chunk_hash,
    verify_page,
)
from p2pshare.proto.pages import HASHES_PER_PAGE, PAGE_SIZE, page_for_chunk
from p2pshare.proto.signed_manifest import decode_signed_manifest, sign_manifest

if TYPE_CHECKING:
    from collections.abc import Set

    from p2pshare.identity import NodeKey
    from p2pshare.proto.manifest import BuiltManifest

CS = MIN_CHUNK_SIZE
PUBLISHER = bytes(range(32))
TIB = 1 << 40

# Files are leaves named "<n>.bin" under directories that are never file names, so
# every generated tree is a valid one; the path rules have their own tests.
_directories = st.sampled_from(["", "a/", "b/", "a/c/", "\u00e9/", "Z/"])
_sizes = st.sampled_from([0, 1, 100, CS - 1, CS, CS + 1, 3 * CS + 7])
shares = st.lists(st.tuples(_directories, _sizes, st.integers(0, 2**32)), max_size=6).map(
    lambda files: {
        f"{directory}{index}.bin": random.Random(seed).randbytes(size)
        for index, (directory, size, seed) in enumerate(files)
    }
)


# Empty directories that hold none of the generated files and none of one another.
empty_dirs = st.sets(st.sampled_from(["e", "a/e", "a/c/e/f", "Z/g", "new/deep/dir"]))


def _entries(files: dict[str, bytes], executable: Set[str] = frozenset()) -> list[FileEntry]:
    return [
        FileEntry(path, len(data), b"".join(hash_chunks(data, CS)), path in executable)
        for path, data in files.items()
    ]


def _build(
    files: dict[str, bytes],
    publisher: bytes = PUBLISHER,
    *,
    executable: Set[str] = frozenset(),
    directories: Set[str] = frozenset(),
) -> BuiltManifest:
    return build_manifest(
        _entries(files, executable),
        kind=ShareKind.DIRECTORY,
        publisher=publisher,
        created=1_700_000_000,
        chunk_size=CS,
        directories=directories,
    )


def _fake_hashes(first: int, count: int) -> bytes:
    return b"".join(index.to_bytes(HASH_SIZE, "big") for index in range(first, first + count))


def _paged(chunk_counts: list[int]) -> BuiltManifest:
    """A share whose chunk hashes are the numbers 0, 1, 2, ... (nothing gets hashed)."""
    entries, first = [], 0
    for index, count in enumerate(chunk_counts):
        size = count * CS - (index % 2) if count else 0
        entries.append(FileEntry(f"f{index:03}", size, _fake_hashes(first, count)))
        first += count
    return build_manifest(
        entries, kind=ShareKind.DIRECTORY, publisher=PUBLISHER, created=0, chunk_size=CS
    )


# --- canonical encoding ---------------------------------------------------------------


@given(shares)
def test_manifest_round_trips(files: dict[str, bytes]) -> None:
    manifest = _build(files).manifest
    assert decode_manifest(encode_manifest(manifest)) == manifest


@given(shares, st.randoms())
def test_walk_order_does_not_change_the_bytes(files: dict[str, bytes], rnd: random.Random) -> None:
    shuffled = list(files.items())
    rnd.shuffle(shuffled)
    expected = encode_manifest(_build(files).manifest)
    assert encode_manifest(_build(dict(shuffled)).manifest) == expected


@given(shares, st.data(), empty_dirs)
def test_manifest_with_exec_flags_and_empty_directories_round_trips(
    files: dict[str, bytes], data: st.DataObject, directories: set[str]
) -> None:
    executable = data.draw(st.sets(st.sampled_from(sorted(files))) if files else st.just(set()))
    manifest = _build(files, executable=executable, directories=directories).manifest
    decoded = decode_manifest(encode_manifest(manifest))
    assert decoded == manifest
    assert {entry.path for entry in decoded.entries if entry.executable} == executable
    assert set(decoded.directories) == directories


@given(shares)
def test_share_without_exec_or_empty_directories_encodes_as_before(
    files: dict[str, bytes],
) -> None:
    # The layout of format 1 before the optional parts existed, written out by hand.
    manifest = _build(files).manifest
    before = msgpack.packb(
        {
            "v": 1,
            "kind": "dir",
            "name": None,
            "publisher": PUBLISHER,
            "created": 1_700_000_000,
            "chunk_size": CS,
            "entries": [[entry.path, entry.size] for entry in manifest.entries],
            "hashes": manifest.inline_hashes,
            "pages": [],
        },
        use_bin_type=True,
    )
    assert encode_manifest(manifest) == before


def test_exec_flag_and_empty_directory_change_the_content_id(node_key: NodeKey) -> None:
    files = {"run.sh": b"#!/bin/sh\n", "data": b"x"}
    variants = [
        _build(files, node_key.public_key),
        _build(files, node_key.public_key, executable={"run.sh"}),
        _build(files, node_key.public_key, directories={"empty"}),
    ]
    cids = {sign_manifest(built.manifest, node_key).cid for built in variants}
    assert len(cids) == 3


@pytest.mark.parametrize(
    "directories",
    [["a"], ["a/b/c"], ["x", "x/y"], ["X", "x"], ["d/../e"], ["z/a"]],
    ids=["a file", "under a file", "holds a listed one", "case twin", "dot-dot", "holds a file"],
)
def test_unsafe_or_non_empty_directory_is_refused(directories: list[str]) -> None:
    with pytest.raises(UnsafePathError):
        _build({"a": b"", "z/a/b/f": b""}, directories=set(directories))
    assert _build({"a": b"", "z/a/b/f": b""}, directories={"z/a/c", "x"}).manifest.directories


def test_single_file_share_has_no_directories() -> None:
    with pytest.raises(LocalProtocolError, match="no directories"):
        build_manifest(
            [FileEntry("one", 0, b"")],
            kind=ShareKind.FILE,
            publisher=PUBLISHER,
            created=0,
            directories=["d"],
        )


def test_walk_order_does_not_change_the_content_id(node_key: NodeKey) -> None:
    files = {"b/2": b"two", "a": b"one", "b/1": b"", "c": bytes(3 * CS)}
    orders = [files, dict(reversed(files.items()))]
    cids = {
        sign_manifest(_build(order, node_key.public_key).manifest, node_key).cid for order in orders
    }
    assert len(cids) == 1


def test_entries_are_sorted_by_path_bytes() -> None:
    manifest = _build({"b": b"", "a/z": b"", "a.txt": b"", "\u00e9": b"", "C": b""}).manifest
    paths = [entry.path for entry in manifest.entries]
    assert paths == sorted(paths, key=str.encode)
    assert paths == ["C", "a.txt", "a/z", "b", "\u00e9"]


# --- chunk addressing ------------------------------------------------------------------


@given(shares)
def test_every_chunk_is_addressable_and_checkable(files: dict[str, bytes]) -> None:
    manifest = _build(files).manifest
    seen = []
    for entry_index, entry in enumerate(manifest.entries):
        data = files[entry.path]
        chunks = manifest.chunks_of(entry_index)
        assert len(chunks) == len(hash_chunks(data, CS))
        for chunk_index, global_index in enumerate(chunks):
            assert manifest.global_chunk_index(entry_index, chunk_index) == global_index
            where = manifest.locate_chunk(global_index)
            assert (where.entry_index, where.chunk_index, where.path) == (
                entry_index,
                chunk_index,
                entry.path,
            )
            piece = data[where.offset : where.offset + where.length]
            assert len(piece) == where.length > 0
            assert expected_chunk_hash(manifest, global_index) == hash_chunk(piece)
            seen.append(global_index)
    assert seen == list(range(manifest.total_chunks))
    assert manifest.total_size == sum(len(data) for data in files.values())


def test_empty_files_have_no_chunks() -> None:
    manifest = _build({"a": b"", "b": b"x", "c": b"", "d": b""}).manifest
    assert manifest.total_chunks == 1
    assert [len(manifest.chunks_of(i)) for i in range(4)] == [0, 1, 0, 0]
    assert manifest.locate_chunk(0).path == "b"
    assert manifest.inline_hashes == hash_chunk(b"x")
    with pytest.raises(LocalProtocolError):
        manifest.global_chunk_index(0, 0)


def test_empty_directory_share_is_allowed() -> None:
    manifest = _build({}).manifest
    assert manifest.entries == ()
    assert manifest.total_chunks == 0
    assert decode_manifest(encode_manifest(manifest)) == manifest


@pytest.mark.parametrize("index", [-1, 4])
def test_chunk_outside_the_share_is_a_local_error(index: int) -> None:
    manifest = _build({"a": bytes(4 * CS)}).manifest
    with pytest.raises(LocalProtocolError):
        manifest.locate_chunk(index)
    with pytest.raises(LocalProtocolError):
        expected_chunk_hash(manifest, index)


# --- hash pages ------------------------------------------------------------------------


def test_hashes_stay_inline_up_to_the_threshold() -> None:
    inline = _paged([INLINE_MAX_CHUNKS])
    assert not inline.manifest.paged
    assert inline.pages == ()
    paged = _paged([INLINE_MAX_CHUNKS, 1])
    assert paged.manifest.paged
    assert paged.manifest.inline_hashes == b""
    assert [len(page) for page in paged.pages] == [(INLINE_MAX_CHUNKS + 1) * HASH_SIZE]


def test_paged_chunks_are_checked_through_their_page() -> None:
    counts = [HASHES_PER_PAGE - 3, 0, 5, HASHES_PER_PAGE + 1]
    built = _paged(counts)
    manifest = built.manifest
    total = sum(counts)
    assert manifest.total_chunks == total
    assert len(built.pages) == len(manifest.page_hashes) == 3
    assert [len(page) for page in built.pages] == [PAGE_SIZE, PAGE_SIZE, 3 * HASH_SIZE]
    pages = [verify_page(manifest, index, page) for index, page in enumerate(built.pages)]
    for global_index in (0, HASHES_PER_PAGE - 1, HASHES_PER_PAGE, total - 1):
        page_index, slot = page_for_chunk(global_index)
        page = pages[page_index]
        assert page.chunk_hash(global_index) == global_index.to_bytes(HASH_SIZE, "big")
        assert expected_chunk_hash(manifest, global_index, page) == page.chunk_hash(global_index)
        assert slot == global_index - page.first_chunk
    with pytest.raises(LocalProtocolError):
        expected_chunk_hash(manifest, 0)
    with pytest.raises(LocalProtocolError):
        expected_chunk_hash(manifest, 0, pages[1])
    with pytest.raises(LocalProtocolError):
        verify_page(manifest, 3, built.pages[0])


@given(st.integers(0, 8 * (PAGE_SIZE + 3 * HASH_SIZE) - 1))
def test_any_flipped_bit_in_a_page_is_caught(bit: int) -> None:
    built = _PAGED_SAMPLE
    page_index = 0 if bit < 8 * PAGE_SIZE else 1
    offset = bit // 8 - page_index * PAGE_SIZE
    page = bytearray(built.pages[page_index])
    page[offset] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        verify_page(built.manifest, page_index, bytes(page))


@given(st.integers(0, 1), st.binary(max_size=200))
def test_arbitrary_page_bytes_are_an_integrity_error(page_index: int, page: bytes) -> None:
    with pytest.raises(IntegrityError):
        verify_page(_PAGED_SAMPLE.manifest, page_index, page)


def test_short_or_long_page_is_caught() -> None:
    page = _PAGED_SAMPLE.pages[1]
    for damaged in (page[:-1], page[:-HASH_SIZE], page + bytes(HASH_SIZE), b""):
        with pytest.raises(IntegrityError):
            verify_page(_PAGED_SAMPLE.manifest, 1, damaged)


_PAGED_SAMPLE = _paged([HASHES_PER_PAGE + 3])


# --- size bounds -----------------------------------------------------------------------


def test_one_tebibyte_file_gives_a_small_manifest(node_key: NodeKey) -> None:
    chunks = TIB // (1 << 20)
    built = build_manifest(
        [FileEntry("disk.img", TIB, b"\x00" * HASH_SIZE * chunks)],
        kind=ShareKind.FILE,
        publisher=node_key.public_key,
        created=0,
    )
    assert len(built.pages) == 64
    assert all(len(page) == PAGE_SIZE for page in built.pages)
    signed = sign_manifest(built.manifest, node_key)
    assert len(signed.data) <= 4096 < MAX_MANIFEST_SIZE
    decoded = decode_signed_manifest(signed.data, signed.cid)
    assert decoded.manifest.total_chunks == chunks
    page = verify_page(decoded.manifest, 63, built.pages[63])
    assert expected_chunk_hash(decoded.manifest, chunks - 1, page) == bytes(HASH_SIZE)


def test_largest_share_the_format_allows_still_fits() -> None:
    # 2**28 chunks: 256 TiB at the default chunk size, 16384 page hashes.
    check_shareable([("huge", MAX_TOTAL_CHUNKS << 20)], kind=ShareKind.FILE)
    with pytest.raises(ManifestTooLargeError, match="chunks"):
        check_shareable([("huge", (MAX_TOTAL_CHUNKS << 20) + 1)], kind=ShareKind.FILE)
    with pytest.raises(ManifestTooLargeError):
        build_manifest(
            [FileEntry("huge", (MAX_TOTAL_CHUNKS << 20) + 1, b"")],
            kind=ShareKind.FILE,
            publisher=PUBLISHER,
            created=0,
        )


def test_directory_of_many_files_fits_or_is_refused_clearly() -> None:
    # About 60 bytes per entry: 10_000 fit in 1 MiB, 20_000 do not.
    prefix = "holiday-photos-2026/camera-roll/"
    fits = [(f"{prefix}IMG_{index:06}.jpg", 123_456) for index in range(10_000)]
    check_shareable(fits, kind=ShareKind.DIRECTORY)
    too_many_bytes = [(f"{prefix}IMG_{index:06}.jpg", 123_456) for index in range(20_000)]
    with pytest.raises(ManifestTooLargeError, match="share fewer files"):
        check_shareable(too_many_bytes, kind=ShareKind.DIRECTORY)
    too_many_files = [(str(index), 0) for index in range(MAX_ENTRIES + 1)]
    with pytest.raises(ManifestTooLargeError, match="subdirectories"):
        check_shareable(too_many_files, kind=ShareKind.DIRECTORY)


def test_manifest_too_large_is_a_user_error() -> None:
    from p2pshare.errors import UserError

    assert issubclass(ManifestTooLargeError, UserError)
    assert issubclass(ManifestTooLargeError, LocalProtocolError)


# --- refused input ---------------------------------------------------------------------


def test_single_file_share_has_one_undirected_entry() -> None:
    one = FileEntry("one", 1, hash_chunk(b"1"))
    built = build_manifest([one], kind=ShareKind.FILE, publisher=PUBLISHER, created=0)
    assert built.manifest.kind is ShareKind.FILE
    for files in ([one, FileEntry("two", 0, b"")], [FileEntry("d/one", 1, hash_chunk(b"1"))], []):
        with pytest.raises(LocalProtocolError, match="single-file"):
            build_manifest(files, kind=ShareKind.FILE, publisher=PUBLISHER, created=0)


@pytest.mark.parametrize(
    ("entry", "kwargs"),
    [
        (FileEntry("a", 1, b""), {}),
        (FileEntry("a", 1, bytes(31)), {}),
        (FileEntry("a", 0, bytes(32)), {}),
        (FileEntry("a", -1, b""), {}),
        (FileEntry("a", 0, b""), {"chunk_size": 3 * CS}),
        (FileEntry("a", 0, b""), {"publisher": bytes(31)}),
        (FileEntry("a", 0, b""), {"created": -1}),
    ],
)
def test_inconsistent_input_is_a_local_error(entry: FileEntry, kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"publisher": PUBLISHER, "created": 0, "chunk_size": CS}
    arguments |= kwargs
    with pytest.raises(LocalProtocolError):
        build_manifest([entry], kind=ShareKind.DIRECTORY, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("paths", "name"),
    [(["../x"], None), (["a", "A"], None), (["a", "a/b"], None), (["a"], "x/y"), (["a"], "")],
)
def test_unsafe_paths_and_names_are_refused(paths: list[str], name: str | None) -> None:
    with pytest.raises(UnsafePathError):
        build_manifest(
            [FileEntry(path, 0, b"") for path in paths],
            kind=ShareKind.DIRECTORY,
            publisher=PUBLISHER,
            created=0,
            name=name,
        )
