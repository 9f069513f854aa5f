"""Sealing a scanned share for named recipients (docs/protocol.md, "Private shares").

The files are encrypted chunk by chunk into a staging directory of the home's
``content/``; the share that is published and served is that ciphertext, stored like a
``share --copy``.  The sharer itself is always a recipient, so it can read its share back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pshare.errors import UserError
from p2pshare.proto.keys import public_key_from_peer_id
from p2pshare.proto.manifest import ShareKind
from p2pshare.proto.sealed import (
    KEY_SIZE,
    MAX_RECIPIENTS,
    SHARE_ID_SIZE,
    Envelope,
    PrivateBody,
    PrivateEntry,
    encode_envelope,
    encrypt_chunk,
    plain_chunk_size,
    seal_body,
    seal_content_key,
    sealed_entry_name,
    sealed_size,
)
from p2pshare.proto.signed_manifest import decode_signed_manifest
from p2pshare.store import staging
from p2pshare.store.checked import FileIdentity
from p2pshare.store.scanner import Scan, ScannedFile, check_unchanged, settle

if TYPE_CHECKING:
    from pathlib import Path

    from p2pshare.store.catalog import Catalog


@dataclass(frozen=True)
class SealedScan:
    """The ciphertext files to publish, and the envelope their manifest carries."""

    scan: Scan
    envelope: bytes


def received_unseeded(catalog: Catalog, cid: str) -> bool:
    """Whether this node holds ``cid`` as a private share of another node without
    seeding it (``seed`` pins what it keeps): a recipient's copy, fetched to be read.

    Such a copy is never announced: a provider record would tell anyone who asks that
    the share exists and that this node holds it, i.e. is probably one of its
    recipients."""
    row = catalog.share(cid)
    if row is None or not row.stored or row.pinned or catalog.private_share(cid) is not None:
        return False
    return decode_signed_manifest(row.signed_manifest).manifest.sealed is not None


def recipient_keys(peer_ids: list[str], own_peer_id: str) -> dict[str, bytes]:
    """Each recipient's Ed25519 key by peer ID, the sharer's own included."""
    keys: dict[str, bytes] = {}
    for peer_id in [own_peer_id, *peer_ids]:
        try:
            keys[peer_id] = public_key_from_peer_id(peer_id)
        except ValueError:
            raise UserError(
                f"--to {peer_id!r} is not a peer ID (12D3KooW..., as `p2pshare id` prints it)"
            ) from None
    if len(keys) > MAX_RECIPIENTS:
        raise UserError(f"a private share has at most {MAX_RECIPIENTS - 1} recipients")
    return keys


def seal_scan(
    found: Scan, recipients: dict[str, bytes], chunk_size: int, root: Path, name: str | None
) -> SealedScan:
    """Encrypt the scanned files into ``root`` (a new directory) under a fresh content key."""
    content_key = os.urandom(KEY_SIZE)
    share_id = os.urandom(SHARE_ID_SIZE)
    files = sorted(found.files, key=lambda f: f.rel_path.encode("utf-8"))
    staging.private_dir(root)
    sealed_files = []
    for index, file in enumerate(files):
        target = root / sealed_entry_name(index)
        _seal_file(file, target, content_key, share_id, index, chunk_size)
        st = target.stat()
        sealed_files.append(ScannedFile(target.name, target, st.st_size, st.st_mtime_ns))
    body = PrivateBody(
        single_file=found.kind is ShareKind.FILE,
        name=name,
        entries=tuple(PrivateEntry(f.rel_path, f.size, f.executable) for f in files),
        directories=found.empty_dirs,
    )
    envelope = Envelope(
        share_id=share_id,
        sealed_keys=tuple(
            seal_content_key(content_key, key, share_id) for key in recipients.values()
        ),
        body=seal_body(content_key, share_id, body),
    )
    sealed = Scan(ShareKind.DIRECTORY, root, tuple(sealed_files), found.skipped)
    return SealedScan(sealed, encode_envelope(envelope))


def _seal_file(
    file: ScannedFile, target: Path, key: bytes, share_id: bytes, index: int, chunk_size: int
) -> None:
    """Encrypt ``file`` into the new ``target`` (0600); refuse it if it changes meanwhile.

    An OSError goes up to the staging directory's owner (p2pshare.store.staging), which
    says what failed, a full disk included.
    """
    plain = plain_chunk_size(chunk_size)
    count = -(-file.size // plain)
    sealed = 0
    with file.abs_path.open("rb") as src, staging.private_file(target) as dst:
        before = FileIdentity.of(os.fstat(src.fileno()))
        settle(before)
        for chunk in range(count):
            data = src.read(plain)
            sealed += len(data)
            if len(data) != min(plain, file.size - chunk * plain):
                break
            dst.write(encrypt_chunk(key, share_id, index, chunk, chunk == count - 1, data))
        else:
            sealed += len(src.read(1))
        after = FileIdentity.of(os.fstat(src.fileno()))
    check_unchanged(file, before, after, sealed)


def sealed_bytes(found: Scan, chunk_size: int) -> int:
    """What sealing ``found`` writes into the store."""
    return sum(sealed_size(f.size, chunk_size) for f in found.files)
