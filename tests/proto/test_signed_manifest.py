"""Signed manifests on the wire: tampering, non-canonical encodings and garbage.

Flipped bits and garbage, alike for every signed kind, are in test_signed.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from p2pshare.identity import NodeKey
from p2pshare.proto.cid import ContentId
from p2pshare.proto.manifest import MAX_MANIFEST_SIZE, decode_manifest, encode_manifest
from p2pshare.proto.signed_manifest import (
    SIGNATURE_DOMAIN,
    decode_signed_manifest,
    sign_manifest,
    signing_message,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from p2pshare.proto.signed_manifest import SignedManifest

    MakeShare = Callable[[Mapping[str, bytes]], SignedManifest]

FILES = {"docs/readme.txt": b"read me\n", "empty": b"", "data.bin": bytes(range(256)) * 100}


def _body(signed: SignedManifest) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(signed.body)
    return body


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _wire(body: bytes, signature: bytes) -> bytes:
    return _pack({"body": body, "sig": signature})


def test_signed_manifest_round_trips(make_share: MakeShare) -> None:
    signed = make_share(FILES)
    assert signed.cid == ContentId.of(signed.data)
    assert decode_signed_manifest(signed.data) == signed
    assert decode_signed_manifest(signed.data, signed.cid) == signed
    assert signed.manifest.publisher_peer_id == NodeKey.from_seed(bytes(range(32))).peer_id


def test_signature_covers_the_domain_separated_body(make_share: MakeShare) -> None:
    signed = make_share(FILES)
    assert signing_message(signed.body) == b"p2pshare-manifest-v1\x00" + signed.body
    assert signed.body == encode_manifest(signed.manifest)
    assert SIGNATURE_DOMAIN.endswith(b"\0")


def test_only_the_publisher_can_sign(make_share: MakeShare) -> None:
    other = NodeKey.from_seed(bytes(32))
    with pytest.raises(LocalProtocolError):
        sign_manifest(make_share(FILES).manifest, other)


@pytest.mark.parametrize(
    "change",
    [
        {"created": 1_700_000_001},
        {"name": "renamed"},
        {"entries": [["data.bin", 25600], ["docs/readme.txt", 8], ["empty", 0], ["more", 0]]},
        {"publisher": NodeKey.from_seed(bytes(32)).public_key},
    ],
)
def test_altered_body_with_old_signature_is_an_integrity_error(
    make_share: MakeShare, change: dict[str, object]
) -> None:
    signed = make_share(FILES)
    body = _body(signed) | change
    assert decode_manifest(_pack(body))  # still a valid manifest, only not the signed one
    with pytest.raises(IntegrityError):
        decode_signed_manifest(_wire(_pack(body), signed.signature))


@pytest.mark.parametrize(
    "weak_key",
    [
        bytes.fromhex("01" + "00" * 31),
        bytes.fromhex("01" + "00" * 30 + "80"),
        bytes(32),
        bytes.fromhex("ec" + "ff" * 30 + "7f"),
        bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    ],
)
def test_small_order_publisher_key_is_refused(make_share: MakeShare, weak_key: bytes) -> None:
    # With the identity point as key, R = identity and S = 0 verify for every message.
    body = _pack(_body(make_share(FILES)) | {"publisher": weak_key})
    forged = bytes.fromhex("01" + "00" * 63)
    with pytest.raises(RemoteProtocolError, match="small-order"):
        decode_signed_manifest(_wire(body, forged))


def test_wrong_content_is_caught_by_the_content_id(make_share: MakeShare) -> None:
    signed, other = make_share(FILES), make_share({"x": b"x"})
    with pytest.raises(IntegrityError, match="content ID"):
        decode_signed_manifest(other.data, signed.cid)


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def _one_entry(body: dict[str, Any], entry: list[object]) -> bytes:
    """The body with ``entry`` as its only file, of size 0 so no hash is needed."""
    return _pack(body | {"entries": [entry], "hashes": b""})


def test_one_executable_entry_is_valid(make_share: MakeShare) -> None:
    # The base of the attribute cases below: only their attribute makes them invalid.
    manifest = decode_manifest(_one_entry(_body(make_share(FILES)), ["a", 0, {"exec": True}]))
    assert manifest.entries[0].executable


NON_CANONICAL_BODIES: dict[str, Callable[[dict[str, Any], bytes], bytes]] = {
    "keys reordered": lambda body, raw: _pack(dict(reversed(body.items()))),
    "extra key": lambda body, raw: _pack(body | {"extra": 1}),
    "missing key": lambda body, raw: _pack({k: v for k, v in body.items() if k != "name"}),
    "float time": lambda body, raw: _pack(body | {"created": 1_700_000_000.0}),
    "bool size": lambda body, raw: _pack(body | {"entries": [["a", True]], "hashes": b"\0" * 32}),
    "negative size": lambda body, raw: _pack(body | {"entries": [["a", -1]]}),
    "unsorted entries": lambda body, raw: _pack(body | {"entries": body["entries"][::-1]}),
    "unknown kind": lambda body, raw: _pack(body | {"kind": "folder"}),
    "file kind with three files": lambda body, raw: _pack(body | {"kind": "file"}),
    "bad chunk size": lambda body, raw: _pack(body | {"chunk_size": 3 << 14}),
    "short key": lambda body, raw: _pack(body | {"publisher": bytes(31)}),
    "key as text": lambda body, raw: _pack(body | {"publisher": "k" * 32}),
    "missing hash": lambda body, raw: _pack(body | {"hashes": body["hashes"][:-32]}),
    "pages for a small share": lambda body, raw: _pack(body | {"pages": [bytes(32)]}),
    "unsafe path": lambda body, raw: _pack(body | {"entries": [["../x", 0]], "hashes": b""}),
    "wide integer": lambda body, raw: _replace_once(
        raw,
        b"\xce" + (1_700_000_000).to_bytes(4, "big"),
        b"\xcf" + (1_700_000_000).to_bytes(8, "big"),
    ),
    "wide string": lambda body, raw: _replace_once(raw, b"\xa4kind", b"\xd9\x04kind"),
    "duplicate key": lambda body, raw: bytes([raw[0] + 1]) + raw[1:] + _pack("v") + _pack(1),
    "trailing byte": lambda body, raw: raw + b"\xc0",
    "timestamp extension": lambda body, raw: _pack(body | {"created": msgpack.Timestamp(1, 0)}),
    "exec flag false": lambda body, raw: _one_entry(body, ["a", 0, {"exec": False}]),
    "exec flag as 1": lambda body, raw: _one_entry(body, ["a", 0, {"exec": 1}]),
    "empty attributes": lambda body, raw: _one_entry(body, ["a", 0, {}]),
    "unknown attribute": lambda body, raw: _one_entry(
        body, ["a", 0, {"exec": True, "mode": 0o4755}]
    ),
    "attribute not a map": lambda body, raw: _one_entry(body, ["a", 0, True]),
    "four-element entry": lambda body, raw: _one_entry(body, ["a", 0, {"exec": True}, None]),
    "empty dirs key": lambda body, raw: _pack(body | {"dirs": []}),
    "dirs before pages": lambda body, raw: _pack(
        {k: v for k, v in body.items() if k != "pages"} | {"dirs": ["x"], "pages": []}
    ),
    "unsorted dirs": lambda body, raw: _pack(body | {"dirs": ["y", "x"]}),
    "dir holding a file": lambda body, raw: _pack(body | {"dirs": ["docs"]}),
    "dir equal to a file": lambda body, raw: _pack(body | {"dirs": ["empty"]}),
    "dir under a file": lambda body, raw: _pack(body | {"dirs": ["empty/x"]}),
    "dir holding a dir": lambda body, raw: _pack(body | {"dirs": ["x", "x/y"]}),
    "unsafe dir": lambda body, raw: _pack(body | {"dirs": ["../x"]}),
    "dir as bytes": lambda body, raw: _pack(body | {"dirs": [b"x"]}),
}


@pytest.mark.parametrize("alter", NON_CANONICAL_BODIES.values(), ids=NON_CANONICAL_BODIES.keys())
def test_non_canonical_or_invalid_body_is_refused(
    make_share: MakeShare, node_key: NodeKey, alter: Callable[[dict[str, Any], bytes], bytes]
) -> None:
    signed = make_share(FILES)
    body = alter(_body(signed), signed.body)
    with pytest.raises(RemoteProtocolError):
        decode_manifest(body)
    # Even correctly signed by the publisher, such a body is refused.
    resigned = _wire(body, node_key.sign(signing_message(body)))
    with pytest.raises(RemoteProtocolError):
        decode_signed_manifest(resigned)


def test_newer_version_is_refused_by_name(make_share: MakeShare) -> None:
    body = _pack(_body(make_share(FILES)) | {"v": 2})
    with pytest.raises(RemoteProtocolError, match="version 2 is not supported"):
        decode_manifest(body)


NON_CANONICAL_ENVELOPES: dict[str, Callable[[bytes, bytes], bytes]] = {
    "keys reordered": lambda body, sig: _pack({"sig": sig, "body": body}),
    "extra key": lambda body, sig: _pack({"body": body, "sig": sig, "x": 0}),
    "short signature": lambda body, sig: _pack({"body": body, "sig": sig[:-1]}),
    "body as text": lambda body, sig: _pack({"body": body.decode("latin-1"), "sig": sig}),
    "array": lambda body, sig: _pack([body, sig]),
    "wide signature header": lambda body, sig: _replace_once(
        _wire(body, sig), b"\xa3sig\xc4\x40", b"\xa3sig\xc5\x00\x40"
    ),
    "trailing byte": lambda body, sig: _wire(body, sig) + b"\x00",
}


@pytest.mark.parametrize(
    "alter", NON_CANONICAL_ENVELOPES.values(), ids=NON_CANONICAL_ENVELOPES.keys()
)
def test_non_canonical_envelope_is_refused(
    make_share: MakeShare, alter: Callable[[bytes, bytes], bytes]
) -> None:
    signed = make_share(FILES)
    with pytest.raises(RemoteProtocolError):
        decode_signed_manifest(alter(signed.body, signed.signature))


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError, match="limit"):
        decode_signed_manifest(bytes(MAX_MANIFEST_SIZE + 1))
    with pytest.raises(RemoteProtocolError, match="limit"):
        decode_manifest(b"\xc0" * MAX_MANIFEST_SIZE)


def test_huge_declared_lengths_are_refused() -> None:
    for header in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"):
        with pytest.raises(RemoteProtocolError):
            decode_manifest(header)
        with pytest.raises(RemoteProtocolError):
            decode_signed_manifest(header)


# --- garbage invariant: typed error or a valid value, nothing else ----------------------
# Here for the manifest body; for signed manifests in test_signed.py.

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_a_typed_error(data: bytes) -> None:
    try:
        manifest = decode_manifest(data)
    except RemoteProtocolError:
        pass
    else:
        assert encode_manifest(manifest) == data


@given(
    st.sampled_from(
        [
            "v",
            "kind",
            "name",
            "publisher",
            "created",
            "chunk_size",
            "entries",
            "hashes",
            "pages",
            "dirs",
        ]
    ),
    msgpack_values,
)
def test_any_field_replaced_gives_a_typed_error_or_a_canonical_manifest(
    make_share: MakeShare, field: str, value: object
) -> None:
    body = _pack(_body(make_share(FILES)) | {field: value})
    try:
        manifest = decode_manifest(body)
    except RemoteProtocolError:
        return
    assert encode_manifest(manifest) == body


@given(st.lists(st.lists(msgpack_values, max_size=3), max_size=4), st.binary(max_size=200))
def test_random_entries_give_a_typed_error_or_a_canonical_manifest(
    make_share: MakeShare, entries: list[list[object]], hashes: bytes
) -> None:
    body = _pack(_body(make_share(FILES)) | {"entries": entries, "hashes": hashes})
    try:
        manifest = decode_manifest(body)
    except RemoteProtocolError:
        return
    assert encode_manifest(manifest) == body


@given(msgpack_values)
def test_random_structures_give_a_typed_error(value: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_manifest(_pack(value))


@given(
    st.dictionaries(st.sampled_from(["exec", "mode", "x"]), msgpack_values, max_size=3)
    | msgpack_values
)
def test_random_entry_attributes_decode_only_as_the_exec_flag(
    make_share: MakeShare, attributes: object
) -> None:
    body = _one_entry(_body(make_share(FILES)), ["a", 0, attributes])
    try:
        manifest = decode_manifest(body)
    except RemoteProtocolError:
        return
    assert attributes == {"exec": True}
    assert manifest.entries[0].executable
    assert encode_manifest(manifest) == body
