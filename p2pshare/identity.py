"""Node identity: one Ed25519 key per node, also the libp2p host key, kept in a file.

The pure functions on public keys and peer IDs (computing a peer ID, verifying a
signature) are in p2pshare.proto.keys; this module adds the key pair and its file,
so it sits above p2pshare.proto, which never imports it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pshare.errors import ConfigError
from p2pshare.proto.keys import peer_id_from_public_key

if TYPE_CHECKING:
    from pathlib import Path

KEY_FILE_MODE = 0o600


@dataclass(frozen=True)
class NodeKey:
    """A node's Ed25519 key pair."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """Build a key from its 32-byte seed (used for test vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 (never readable by others)."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> NodeKey:
        """Read a key written by :meth:`save`; refuse one that others can read."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"no node key at {path}; create one with: p2pshare init") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"node key {path} can be read or changed by other users "
                f"(mode {stat.S_IMODE(mode):o}); fix it with: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"node key {path} is not a valid PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"node key {path} is not an Ed25519 key")
        return cls(key)
