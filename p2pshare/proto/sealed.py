"""Private shares: content keys sealed to named peers, content encrypted chunk by chunk.

Normative description and test vectors: docs/protocol.md, "Private shares".

* A node's X25519 key is derived from its Ed25519 identity by the standard birational
  map (RFC 7748 section 4.1, as libsodium's ``crypto_sign_ed25519_pk_to_curve25519``),
  so a sharer needs nothing but the recipient's peer ID, which embeds its Ed25519 key.
* The per-share content key is sealed to each recipient: ephemeral X25519, then
  HKDF-SHA256 over the shared secret (salt: ephemeral public key || recipient X25519
  key), then ChaCha20-Poly1305 with the share ID as associated data.
* Each chunk of each file is sealed with ChaCha20-Poly1305 under the content key; the
  nonce is the file's index and the chunk's index, so no nonce repeats under one key,
  and the associated data binds the share ID and whether the chunk is a file's last.
  A plaintext chunk is ``chunk_size - 16`` bytes, so ciphertext chunk ``j`` of file
  ``i`` is exactly chunk ``j`` of entry ``i`` in the public chunk plan: seeders verify
  and serve ciphertext by BLAKE3 as for any share, and cannot read it.
* The file names, sizes and empty directories (the :class:`PrivateBody`) are sealed
  under the content key with a nonce no chunk uses.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError, UserError
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
from p2pshare.proto.chunks import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, is_valid_chunk_size
from p2pshare.proto.keys import is_small_order_key
from p2pshare.proto.paths import check_file_name, check_tree

KEY_SIZE = 32
SHARE_ID_SIZE = 16
TAG_SIZE = 16
SEALED_KEY_SIZE = 32 + KEY_SIZE + TAG_SIZE
# A share sealed to more peers than this is better split by group; the bound keeps the
# manifest and the recipient's trial decryptions small.
MAX_RECIPIENTS = 256
MAX_ENTRIES = 100_000
MAX_FILE_SIZE = (1 << 63) - 1
# The envelope travels inside the manifest body, which is below 1 MiB.
MAX_ENVELOPE_SIZE = (1 << 20) - 64 * 1024
MAX_BODY_SIZE = MAX_ENVELOPE_SIZE - MAX_RECIPIENTS * SEALED_KEY_SIZE - 1024
_SEAL_INFO = b"p2pshare-sealed-key-v1"
# File indices stay below MAX_ENTRIES, so no chunk nonce starts with four 0xff bytes.
_BODY_NONCE = b"\xff\xff\xff\xff" + bytes(8)
_BODY_AAD_SUFFIX = b"body"
# Curve25519's field prime, for the Edwards -> Montgomery map.
_P = 2**255 - 19
_ZERO_NONCE = bytes(12)


class NotARecipientError(UserError):
    """None of a private share's sealed keys opens with this node's key."""


class TamperedCiphertextError(IntegrityError):
    """A sealed chunk or body fails authentication under the content key."""


def x25519_private_from_ed25519_seed(seed: bytes) -> X25519PrivateKey:
    """The X25519 key of a node: the clamped first half of SHA-512(seed) (RFC 8032 5.1.5)."""
    if len(seed) != 32:
        raise LocalProtocolError("an Ed25519 seed has 32 bytes")
    # X25519PrivateKey clamps the scalar itself, exactly as Ed25519 does.
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def x25519_public_from_ed25519(public_key: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key: u = (1 + y) / (1 - y) mod p."""
    if len(public_key) != 32 or is_small_order_key(public_key):
        raise LocalProtocolError("the recipient key is not a usable Ed25519 public key")
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise LocalProtocolError("the recipient key is not a canonical Ed25519 encoding")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def _wrapping_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=ephemeral + recipient, info=_SEAL_INFO
    ).derive(shared)


def seal_content_key(
    content_key: bytes,
    recipient_ed25519: bytes,
    share_id: bytes,
    ephemeral: X25519PrivateKey | None = None,
) -> bytes:
    """``ephemeral public key || ChaCha20-Poly1305(content key)`` for one recipient.

    ``ephemeral`` is for test vectors only; a fresh key is drawn otherwise.
    """
    _require(content_key, KEY_SIZE, "content key")
    _require(share_id, SHARE_ID_SIZE, "share ID")
    recipient = x25519_public_from_ed25519(recipient_ed25519)
    secret = ephemeral or X25519PrivateKey.generate()
    ephemeral_public = secret.public_key().public_bytes_raw()
    shared = secret.exchange(X25519PublicKey.from_public_bytes(recipient))
    wrapping = _wrapping_key(shared, ephemeral_public, recipient)
    return ephemeral_public + ChaCha20Poly1305(wrapping).encrypt(_ZERO_NONCE, content_key, share_id)


def open_content_key(sealed_keys: tuple[bytes, ...], seed: bytes, share_id: bytes) -> bytes:
    """The content key sealed to the node of ``seed``; NotARecipientError if none is."""
    own = x25519_private_from_ed25519_seed(seed)
    own_public = own.public_key().public_bytes_raw()
    for sealed in sealed_keys:
        if len(sealed) != SEALED_KEY_SIZE:
            continue
        ephemeral = sealed[:32]
        try:
            shared = own.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        except ValueError:
            # An all-zero shared secret (a small-order ephemeral key) opens nothing.
            continue
        wrapping = _wrapping_key(shared, ephemeral, own_public)
        try:
            return ChaCha20Poly1305(wrapping).decrypt(_ZERO_NONCE, sealed[32:], share_id)
        except InvalidTag:
            continue
    raise NotARecipientError(
        "this share is private and not sealed to this node, so its content cannot be read here"
    )


def plain_chunk_size(chunk_size: int) -> int:
    """Plaintext bytes per chunk: one ciphertext chunk is these plus the 16-byte tag."""
    if not is_valid_chunk_size(chunk_size):
        raise LocalProtocolError(
            f"chunk size {chunk_size} is not a power of two between "
            f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )
    return chunk_size - TAG_SIZE


def sealed_size(plain_size: int, chunk_size: int) -> int:
    """The ciphertext size of a file of ``plain_size`` bytes."""
    chunks = -(-plain_size // plain_chunk_size(chunk_size))
    return plain_size + chunks * TAG_SIZE


def plain_size(sealed: int, chunk_size: int) -> int:
    """The plaintext size of a ciphertext file; RemoteProtocolError if no file seals to it."""
    chunks = -(-sealed // chunk_size)
    size = sealed - chunks * TAG_SIZE
    if size < 0 or sealed_size(size, chunk_size) != sealed:
        raise RemoteProtocolError(f"{sealed} bytes is not the size of a sealed file")
    return size


def _chunk_nonce(file_index: int, chunk_index: int) -> bytes:
    if not 0 <= file_index < MAX_ENTRIES or not 0 <= chunk_index < 1 << 64:
        raise LocalProtocolError(f"chunk {chunk_index} of file {file_index} has no nonce")
    return file_index.to_bytes(4, "big") + chunk_index.to_bytes(8, "big")


def encrypt_chunk(
    content_key: bytes, share_id: bytes, file_index: int, chunk_index: int, last: bool, data: bytes
) -> bytes:
    """Seal one plaintext chunk (at most ``plain_chunk_size`` bytes) of one file."""
    nonce = _chunk_nonce(file_index, chunk_index)
    return ChaCha20Poly1305(content_key).encrypt(nonce, data, share_id + bytes([last]))


def decrypt_chunk(
    content_key: bytes, share_id: bytes, file_index: int, chunk_index: int, last: bool, data: bytes
) -> bytes:
    """Open one sealed chunk; TamperedCiphertextError unless it authenticates."""
    nonce = _chunk_nonce(file_index, chunk_index)
    try:
        return ChaCha20Poly1305(content_key).decrypt(nonce, data, share_id + bytes([last]))
    except InvalidTag:
        raise TamperedCiphertextError(
            f"chunk {chunk_index} of sealed file {file_index} does not authenticate"
        ) from None


@dataclass(frozen=True)
class PrivateEntry:
    path: str
    size: int
    executable: bool = False


@dataclass(frozen=True)
class PrivateBody:
    """What only recipients learn: the share's kind and name, its files, its empty directories.

    ``single_file``: the share is one file (its one entry's path is a bare name), as a
    plain share of kind ``"file"``.
    """

    single_file: bool
    name: str | None
    entries: tuple[PrivateEntry, ...]
    directories: tuple[str, ...] = ()


_BODY_KEYS = ("file", "name", "entries", "dirs")


def encode_private_body(body: PrivateBody) -> bytes:
    return pack(
        {
            "file": body.single_file,
            "name": body.name,
            "entries": [[entry.path, entry.size, entry.executable] for entry in body.entries],
            "dirs": list(body.directories),
        }
    )


def _parse_private_body(value: object) -> PrivateBody:
    single_file, name, entries, dirs = expect_map(value, _BODY_KEYS, what="private body")
    if type(single_file) is not bool:
        raise RemoteProtocolError("a private body's 'file' flag must be a boolean")
    parsed = []
    for item in expect_list(entries, what="private entries", max_len=MAX_ENTRIES):
        path, size, executable = expect_list(item, what="private entry", max_len=3, length=3)
        if type(executable) is not bool:
            raise RemoteProtocolError("a private entry's executable flag must be a boolean")
        parsed.append(
            PrivateEntry(
                path=expect_str(path, what="entry path"),
                size=expect_int(size, what="entry size", low=0, high=MAX_FILE_SIZE),
                executable=executable,
            )
        )
    body = PrivateBody(
        single_file=single_file,
        name=None if name is None else expect_str(name, what="share name"),
        entries=tuple(parsed),
        directories=tuple(
            expect_str(path, what="empty directory")
            for path in expect_list(dirs, what="empty directories", max_len=MAX_ENTRIES)
        ),
    )
    check_private_body(body, RemoteProtocolError)
    return body


def check_private_body(body: PrivateBody, fail: type[Exception] = LocalProtocolError) -> None:
    """The manifest's path rules (docs/protocol.md, "Safe paths"), raising ``fail``."""
    if body.name is not None:
        check_file_name(body.name)
    if len(body.entries) + len(body.directories) > MAX_ENTRIES:
        raise fail(f"a private share lists at most {MAX_ENTRIES} files and empty directories")
    if body.single_file and (
        len(body.entries) != 1 or "/" in body.entries[0].path or body.directories
    ):
        raise fail("a single-file private share has one entry, named without a directory")
    check_tree((entry.path for entry in body.entries), body.directories)
    for paths in ([entry.path for entry in body.entries], list(body.directories)):
        encoded = [path.encode("utf-8") for path in paths]
        if any(a >= b for a, b in itertools.pairwise(encoded)):
            raise fail("private entries must be sorted by path bytes")


PRIVATE_BODY: Codec[PrivateBody] = Codec(
    what="private body",
    encode=encode_private_body,
    parse=_parse_private_body,
    limits=Limits(
        max_size=MAX_BODY_SIZE,
        max_str_len=4096,
        max_bin_len=0,
        max_array_len=MAX_ENTRIES,
        max_map_len=len(_BODY_KEYS),
    ),
)


def seal_body(content_key: bytes, share_id: bytes, body: PrivateBody) -> bytes:
    check_private_body(body)
    return ChaCha20Poly1305(content_key).encrypt(
        _BODY_NONCE, encode_private_body(body), share_id + _BODY_AAD_SUFFIX
    )


def open_body(content_key: bytes, share_id: bytes, sealed: bytes) -> PrivateBody:
    """The private body; TamperedCiphertextError or RemoteProtocolError unless valid."""
    try:
        plain = ChaCha20Poly1305(content_key).decrypt(
            _BODY_NONCE, sealed, share_id + _BODY_AAD_SUFFIX
        )
    except InvalidTag:
        raise TamperedCiphertextError(
            "the private share's file list does not authenticate"
        ) from None
    return PRIVATE_BODY.decode(plain)


@dataclass(frozen=True)
class Envelope:
    """The public part of a private share: what a seeder may see and a recipient opens."""

    share_id: bytes
    sealed_keys: tuple[bytes, ...]
    body: bytes


_ENVELOPE_KEYS = ("share", "keys", "body")


def encode_envelope(envelope: Envelope) -> bytes:
    return pack(
        {
            "share": envelope.share_id,
            "keys": sorted(envelope.sealed_keys),
            "body": envelope.body,
        }
    )


def _parse_envelope(value: object) -> Envelope:
    share, keys, body = expect_map(value, _ENVELOPE_KEYS, what="private envelope")
    sealed = tuple(
        expect_bytes(key, what="sealed key", length=SEALED_KEY_SIZE, max_len=SEALED_KEY_SIZE)
        for key in expect_list(keys, what="sealed keys", max_len=MAX_RECIPIENTS)
    )
    if not sealed:
        raise RemoteProtocolError("a private share is sealed to at least one recipient")
    return Envelope(
        share_id=expect_bytes(share, what="share ID", length=SHARE_ID_SIZE, max_len=SHARE_ID_SIZE),
        sealed_keys=sealed,
        body=expect_bytes(body, what="sealed body", max_len=MAX_BODY_SIZE),
    )


ENVELOPE: Codec[Envelope] = Codec(
    what="private envelope",
    encode=encode_envelope,
    parse=_parse_envelope,
    limits=Limits(
        max_size=MAX_ENVELOPE_SIZE,
        max_str_len=16,
        max_bin_len=MAX_BODY_SIZE,
        max_array_len=MAX_RECIPIENTS,
        max_map_len=len(_ENVELOPE_KEYS),
    ),
)


def _require(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"a {what} has {size} bytes, not {len(value)}")


def sealed_entry_name(file_index: int) -> str:
    """The public name of a private share's file: its index, so the list sorts as the body."""
    return f"{file_index:06d}"


def check_sealed_layout(
    nameless_directory: bool,
    entries: list[tuple[str, int, bool]],
    directories: tuple[str, ...],
    chunk_size: int,
    envelope: bytes,
    fail: type[Exception],
) -> None:
    """The rules of a private share's public manifest, raising ``fail``.

    It is a nameless directory share whose files are named by index, plain and not
    executable, with no empty directories: names, modes and tree are in the sealed body.
    """
    if not nameless_directory or directories:
        raise fail("a private share's manifest is a nameless directory share of sealed files")
    for index, (path, size, executable) in enumerate(entries):
        if path != sealed_entry_name(index) or executable:
            raise fail(f"sealed file {index} must be named {sealed_entry_name(index)!r}")
        try:
            plain_size(size, chunk_size)
        except RemoteProtocolError:
            raise fail(f"sealed file {index} has {size} bytes, no file seals to that") from None
    try:
        ENVELOPE.decode(envelope)
    except RemoteProtocolError as exc:
        raise fail(str(exc)) from None


@dataclass(frozen=True)
class OpenedShare:
    """A private share as its recipient sees it: the content key and the real file list."""

    content_key: bytes
    share_id: bytes
    body: PrivateBody
    chunk_size: int

    def decrypt(self, file_index: int, chunk_index: int, data: bytes) -> bytes:
        """Open ciphertext chunk ``chunk_index`` of file ``file_index``."""
        size = self.body.entries[file_index].size
        last = chunk_index == -(-size // plain_chunk_size(self.chunk_size)) - 1
        return decrypt_chunk(self.content_key, self.share_id, file_index, chunk_index, last, data)


def open_envelope(
    envelope: bytes, seed: bytes, sealed_sizes: list[int], chunk_size: int
) -> OpenedShare:
    """Open a private share's envelope with the node key of ``seed``.

    NotARecipientError when no sealed key is this node's; RemoteProtocolError or
    TamperedCiphertextError when the publisher's file list does not match its ciphertext.
    """
    decoded = ENVELOPE.decode(envelope)
    key = open_content_key(decoded.sealed_keys, seed, decoded.share_id)
    body = open_body(key, decoded.share_id, decoded.body)
    plain = [sealed_size(entry.size, chunk_size) for entry in body.entries]
    if plain != sealed_sizes:
        raise RemoteProtocolError("a private share's file list does not match its sealed files")
    return OpenedShare(key, decoded.share_id, body, chunk_size)
