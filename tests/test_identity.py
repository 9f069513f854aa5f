from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import ConfigError, IntegrityError, UserError
from p2pshare.identity import NodeKey
from p2pshare.proto.keys import peer_id_from_public_key, verify_signature

if TYPE_CHECKING:
    from pathlib import Path


def test_peer_id_matches_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    key = NodeKey.from_seed(bytes(range(32)))
    libp2p_id = ID.from_pubkey(create_new_key_pair(key.seed).public_key).to_base58()
    assert key.peer_id == libp2p_id
    assert key.peer_id.startswith("12D3KooW")


def test_save_load_round_trip_with_mode_0600(tmp_path: Path) -> None:
    key = NodeKey.generate()
    path = tmp_path / "node.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NodeKey.load(path).peer_id == key.peer_id


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    NodeKey.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        NodeKey.load(path)


def test_missing_and_garbage_keys_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    with pytest.raises(ConfigError, match="p2pshare init"):
        NodeKey.load(path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a valid PEM"):
        NodeKey.load(path)


def test_signatures_verify_and_tampering_is_caught() -> None:
    key = NodeKey.generate()
    sig = key.sign(b"message")
    verify_signature(key.public_key, sig, b"message")
    with pytest.raises(IntegrityError):
        verify_signature(key.public_key, sig, b"messagf")
    with pytest.raises(IntegrityError):
        verify_signature(key.public_key, sig[:-1], b"message")


def test_peer_id_needs_a_32_byte_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        peer_id_from_public_key(b"short")


def test_small_order_keys_never_verify() -> None:
    # With this key and signature Ed25519 verification accepts every message.
    weak_key = bytes([1]) + bytes(31)
    weak_sig = bytes([1]) + bytes(63)
    with pytest.raises(IntegrityError, match="small-order"):
        verify_signature(weak_key, weak_sig, b"anything at all")
