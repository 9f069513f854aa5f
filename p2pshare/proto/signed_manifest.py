"""Signed manifests: the bytes a content ID names, and the publisher's signature in them.

Wire form (docs/protocol.md, "Signature")::

    canonical msgpack {"body": <canonical manifest body bytes>, "sig": <64-byte Ed25519>}

The signature covers ``SIGNATURE_DOMAIN + body``: the body's exact bytes, never a
re-encoding, and a prefix no other p2pshare signature uses, so a manifest signature
cannot be replayed as, say, a compute receipt (:mod:`p2pshare.proto.signed`).  The
content ID fixes *what* the manifest says; the signature fixes *who* published it.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pshare.errors import RemoteProtocolError
from p2pshare.proto.canonical import expect_bytes, expect_map, pack, unpack
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import (
    MANIFEST_BODY,
    MAX_BODY_SIZE,
    MAX_MANIFEST_SIZE,
    Manifest,
)
from p2pshare.proto.signed import SIGNATURE_SIZE, SignedKind

# Re-exported: callers typed their signing keys with it when it lived here.
from p2pshare.proto.signed import Signer as Signer  # noqa: PLC0414

SIGNATURE_DOMAIN = b"p2pshare-manifest-v1\0"
_WIRE_KEYS = ("body", "sig")
_MANIFESTS = SignedKind(
    name="manifest",
    role="publisher",
    domain=SIGNATURE_DOMAIN,
    body=MANIFEST_BODY,
    # The manifest travels in a map, not as ``body || signature``.
    max_size=MAX_MANIFEST_SIZE,
    signer=lambda manifest: manifest.publisher,
)


@dataclass(frozen=True)
class SignedManifest:
    """A manifest with its signature, the exact bytes that travel, and their content ID."""

    manifest: Manifest
    body: bytes
    signature: bytes
    data: bytes
    cid: ContentId


signing_message = _MANIFESTS.signing_message


def _wire(body: bytes, signature: bytes) -> bytes:
    return pack({"body": body, "sig": signature})


def sign_manifest(manifest: Manifest, signer: Signer) -> SignedManifest:
    """Sign a manifest built by ``build_manifest`` with the publisher's own key."""
    body, signature = _MANIFESTS.sign(manifest, signer)
    data = _wire(body, signature)
    return SignedManifest(manifest, body, signature, data, ContentId.of(data))


def decode_signed_manifest(data: bytes, expected_cid: ContentId | None = None) -> SignedManifest:
    """Decode and check untrusted signed-manifest bytes.

    With ``expected_cid`` the bytes are first checked against it, so a provider that
    sends anything else is caught before any parsing.  Raises IntegrityError for a
    content ID or signature mismatch, RemoteProtocolError for anything malformed.
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise RemoteProtocolError(
            f"signed manifest has {len(data)} bytes, more than the limit {MAX_MANIFEST_SIZE}"
        )
    if expected_cid is not None:
        expected_cid.verify(data)
    value = unpack(
        data,
        what="signed manifest",
        max_size=MAX_MANIFEST_SIZE,
        max_str_len=max(len(key) for key in _WIRE_KEYS),
        max_bin_len=MAX_BODY_SIZE,
        max_array_len=0,
        max_map_len=len(_WIRE_KEYS),
    )
    body_value, signature_value = expect_map(value, _WIRE_KEYS, what="signed manifest")
    body = expect_bytes(body_value, what="manifest body", max_len=MAX_BODY_SIZE)
    signature = expect_bytes(
        signature_value, what="signature", length=SIGNATURE_SIZE, max_len=SIGNATURE_SIZE
    )
    if _wire(body, signature) != data:
        raise RemoteProtocolError("signed manifest is not canonically encoded")
    manifest = _MANIFESTS.open(body, signature)
    cid = expected_cid if expected_cid is not None else ContentId.of(data)
    return SignedManifest(manifest, body, signature, data, cid)
