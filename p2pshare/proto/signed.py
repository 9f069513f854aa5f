"""Signed bodies: one key's Ed25519 signature over a body's exact bytes, domain-separated.

Receipts, offers and manifests are signed the same way: the signature covers
``domain + body``, where ``body`` is the canonical encoding of the value (never a
re-encoding) and ``domain`` a prefix no other kind uses, so a signature of one kind
cannot be replayed as another.  A :class:`SignedKind` holds what tells the kinds apart:
the prefix, the body codec (encoder, parser, unpack limits), the largest signed form
and which key the value names as its signer, so a kind's module declares one value
instead of repeating the sign / open / verify functions.

Receipts and offers travel as ``body || signature``: the signature sits at a fixed
place, so a peer who knows which key must have signed checks it before parsing a single
byte (:meth:`SignedKind.verify_trailing`), and any damage is then an IntegrityError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from p2pshare.proto.keys import verify_signature

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.proto.canonical import Codec

SIGNATURE_SIZE: Final = 64

T = TypeVar("T")


class Signer(Protocol):
    """What signing needs of a key; :class:`p2pshare.identity.NodeKey` is one."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class SignedKind(Generic[T]):
    """One kind of signed value.

    ``body`` decodes (RemoteProtocolError unless valid and canonical) and encodes the
    signed body; ``max_size`` bounds the ``body || signature`` form; ``signer`` is the
    public key the value names as the one that signs it, and ``role`` what error
    messages call that key's owner.
    """

    name: str
    role: str
    domain: bytes
    body: Codec[T]
    max_size: int
    signer: Callable[[T], bytes]

    def signing_message(self, body: bytes) -> bytes:
        return self.domain + body

    def sign(self, value: T, key: Signer) -> tuple[bytes, bytes]:
        """The body of ``value`` and its signature by ``key``, which must be the one it names."""
        if key.public_key != self.signer(value):
            raise LocalProtocolError(f"{self._a_name} must be signed by the {self.role} it names")
        body = self.body.encode(value)
        return body, key.sign(self.signing_message(body))

    def open(self, body: bytes, signature: bytes) -> T:
        """Parse ``body``, then check the signature against the key it names.

        RemoteProtocolError for a malformed body, IntegrityError for a bad signature.
        """
        value = self.body.decode(body)
        verify_signature(self.signer(value), signature, self.signing_message(body))
        return value

    def open_trailing(self, data: bytes) -> tuple[T, bytes, bytes]:
        """The value, body and signature of ``body || signature`` bytes, as :meth:`open`."""
        if not SIGNATURE_SIZE < len(data) <= self.max_size:
            raise RemoteProtocolError(
                f"a signed {self.name} has {SIGNATURE_SIZE + 1} to {self.max_size} bytes, "
                f"not {len(data)}"
            )
        body, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
        return self.open(body, signature), body, signature

    def verify_trailing(self, data: bytes, *, key: bytes) -> tuple[T, bytes, bytes]:
        """Like :meth:`open_trailing`, for bytes that ``key`` must have signed.

        The signature is checked before the body is parsed, so any alteration of the
        bytes, the length included, raises IntegrityError.  Whether the value names
        ``key`` is left to :meth:`check_signer`.
        """
        if not SIGNATURE_SIZE < len(data) <= self.max_size:
            raise IntegrityError(f"{self._a_name} of {len(data)} bytes cannot be valid")
        body, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
        verify_signature(key, signature, self.signing_message(body))
        try:
            value = self.body.decode(body)
        except RemoteProtocolError as exc:
            # Well signed but malformed: the signer itself produced garbage.
            raise IntegrityError(f"{self.role} signed a malformed {self.name} ({exc})") from exc
        return value, body, signature

    def check_signer(self, value: T, key: bytes) -> None:
        """Raise IntegrityError unless ``value`` names ``key`` as its signer.

        Without this a peer could pass off a value someone else signed as its own.
        """
        if self.signer(value) != key:
            raise IntegrityError(
                f"the {self.name} names another {self.role} than the one that sent it"
            )

    @property
    def _a_name(self) -> str:
        return f"{'an' if self.name[0] in 'aeiou' else 'a'} {self.name}"
