"""Helpers for the destination tests: small manifests, and a finished download or job
output written through the same code the daemon uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pshare.proto.chunks import MIN_CHUNK_SIZE, hash_chunks
from p2pshare.proto.manifest import FileEntry, Manifest, ShareKind, build_manifest
from p2pshare.transfer.destination import check_destination
from p2pshare.transfer.output import PartialOutput

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.transfer.outpath import HomeFence

CHUNK = MIN_CHUNK_SIZE


def manifest_of(files: dict[str, bytes], kind: ShareKind) -> Manifest:
    entries = [
        FileEntry(path, len(data), b"".join(hash_chunks(data, CHUNK)))
        for path, data in files.items()
    ]
    name = next(iter(files)) if kind is ShareKind.FILE else "tree"
    return build_manifest(
        entries, kind=kind, publisher=b"\1" * 32, created=1, chunk_size=CHUNK, name=name
    ).manifest


def download(
    dest: Path,
    files: dict[str, bytes],
    kind: ShareKind,
    *,
    force: bool,
    meanwhile: Callable[[], object] | None = None,
    fence: HomeFence | None = None,
) -> None:
    """What a get does to the disk: check, partial, every chunk, finalize.

    ``meanwhile`` runs after the chunks were written, before finalize (a destination
    that appears during a long download).
    """
    manifest = manifest_of(files, kind)
    check_destination(dest, force=force, fence=fence)
    output = PartialOutput(dest, manifest, fence=fence)
    output.open(resume=False)
    for index in range(manifest.total_chunks):
        at = manifest.locate_chunk(index)
        output.write_chunk(index, files[at.path][at.offset : at.offset + at.length])
    output.sync()
    if meanwhile is not None:
        meanwhile()
    output.finalize(force=force)
