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
)
from p2pshare.store.scanner import Scan, ScannedFile

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class SealedScan:
    """The ciphertext files to publish, and the envelope their manifest carries."""

    scan: Scan
    envelope: bytes


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
    root.mkdir(mode=0o700)
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
    plain = plain_chunk_size(chunk_size)
    count = -(-file.size // plain)
    try:
        with file.abs_path.open("rb") as src, target.open("xb") as dst:
            target.chmod(0o600)
            for chunk in range(count):
                data = src.read(plain)
                if len(data) != min(plain, file.size - chunk * plain):
                    raise UserError(f"{file.abs_path} changed while it was being sealed")
                dst.write(encrypt_chunk(key, share_id, index, chunk, chunk == count - 1, data))
            if src.read(1):
                raise UserError(f"{file.abs_path} changed while it was being sealed")
    except OSError as exc:
        raise UserError(f"cannot seal {file.abs_path}: {exc.strerror}") from None
