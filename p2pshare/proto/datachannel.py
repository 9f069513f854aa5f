"""The data channel: an encrypted TCP connection for bulk data, authorised over libp2p.

Sans-IO: messages, the key schedule, the session table and one end's crypto state
(:class:`Channel`); the AEAD frames and their reassembly are p2pshare.proto.dataframes.
The shell (p2pshare.net.datachannel) owns the sockets, the clock and the random
numbers and passes them in.  Normative description and security argument:
docs/data-channel.md.

Setup, on a Noise-secured libp2p stream ``/p2pshare/data/1.0.0``::

    client -> server  OPEN   [ "open", version, client_nonce(32), [cipher, ...] ]
    server -> client  OFFER  [ "offer", session_id(16), server_nonce(32), port, secret(32), cipher ]
                   or REFUSE [ "refuse", code, reason ]

each one length-prefixed frame (p2pshare.proto.framing) of canonical msgpack.  Both
ends then derive two keys with HKDF-SHA256 (:func:`derive_keys`), and the client
connects a TCP socket to the server's ``port``::

    client -> server  session_id | hello frame (client key, counter 0)
    server -> client  hello frame (server key, counter 0)

after which both directions carry AEAD frames (p2pshare.proto.dataframes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pshare.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.canonical import (
    expect_bytes,
    expect_int,
    expect_list,
    expect_str,
    pack,
    unpack,
)
from p2pshare.proto.dataframes import (
    TAG_SIZE,
    Cipher,
    FrameAuthenticationError,
    FrameOpener,
    FrameSealer,
    sealed_size,
)
from p2pshare.proto.framing import HEADER_SIZE, encode_frame
from p2pshare.proto.transfer import Role

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pshare.proto.chunks import BytesLike

PROTOCOL_ID: Final = "/p2pshare/data/1.0.0"
VERSION: Final = 1

NONCE_SIZE: Final = 32
SESSION_ID_SIZE: Final = 16
SECRET_SIZE: Final = 32
KEY_SIZE: Final = 32
# OPEN, OFFER and REFUSE are below 200 bytes; 1 KiB leaves room for later fields.
MAX_SETUP_FRAME: Final = 1024
MAX_REASON: Final = 200
_MAX_CIPHERS = 8
_MAX_NAME = 32
_MAX_FIELDS = 16
_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")

_DOMAIN: Final = b"p2pshare/data/1"
CLIENT_HELLO: Final = _DOMAIN + b" client hello"
SERVER_HELLO: Final = _DOMAIN + b" server hello"
# What the client sends first on the TCP connection, and what the server answers.
CLIENT_HELLO_SIZE: Final = SESSION_ID_SIZE + HEADER_SIZE + len(CLIENT_HELLO) + TAG_SIZE
SERVER_HELLO_SIZE: Final = HEADER_SIZE + len(SERVER_HELLO) + TAG_SIZE


_CIPHER_NAMES: Final = frozenset(c.value for c in Cipher)

# AES-256-GCM first: with AES-NI and carry-less multiply it runs at 6-8 GiB/s per core
# here, ChaCha20-Poly1305 at about 2 GiB/s (docs/data-channel.md).  A node without
# AES instructions would list ChaCha20-Poly1305 first.
DEFAULT_CIPHERS: Final = (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305)


class RefuseCode:
    """Codes of REFUSE; unknown codes from newer peers are kept as they are."""

    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    UNSUPPORTED_VERSION = "unsupported_version"
    NO_COMMON_CIPHER = "no_common_cipher"
    BAD_REQUEST = "bad_request"


# --- errors --------------------------------------------------------------------------


class DataChannelRefusedError(RemoteError):
    """The peer answered OPEN with REFUSE; ``code`` says why."""

    def __init__(self, code: str, reason: str) -> None:
        # The reason is the peer's text: nothing in it may forge a log line.
        reason = "".join(c if c.isprintable() else "?" for c in reason)
        super().__init__(f"the peer refused a data channel ({code}): {reason}")
        self.code = code
        self.reason = reason


class UnknownSessionError(RemoteProtocolError):
    """A TCP connection named a session that is unknown, expired or already used."""


class SessionLimitError(RemoteError):
    """Too many sessions are pending (for this peer or altogether); OPEN is refused as busy."""


class ChannelVersionError(RemoteProtocolError):
    """OPEN asked for a version this node does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(f"data channel version {version} is not supported (this node: {VERSION})")
        self.version = version


class NoCommonCipherError(RemoteProtocolError):
    """OPEN lists no cipher this node supports."""


# --- setup messages --------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """The client asks for a data channel."""

    client_nonce: bytes
    ciphers: tuple[Cipher, ...] = DEFAULT_CIPHERS
    version: int = VERSION


@dataclass(frozen=True)
class ChannelOffer:
    """The server grants one: a single-use session, valid for a short time."""

    session_id: bytes
    server_nonce: bytes
    port: int
    secret: bytes = field(repr=False)
    cipher: Cipher


@dataclass(frozen=True)
class Refuse:
    code: str
    reason: str


def encode_open(message: Open) -> bytes:
    """OPEN as one length-prefixed frame."""
    _check_size(message.client_nonce, NONCE_SIZE, "client nonce")
    if not 1 <= len(message.ciphers) <= _MAX_CIPHERS:
        raise LocalProtocolError(f"OPEN lists 1 .. {_MAX_CIPHERS} ciphers")
    body = ["open", message.version, message.client_nonce, [str(c) for c in message.ciphers]]
    return encode_frame(pack(body), MAX_SETUP_FRAME)


def encode_reply(message: ChannelOffer | Refuse) -> bytes:
    """OFFER or REFUSE as one length-prefixed frame."""
    body: list[object]
    if isinstance(message, ChannelOffer):
        _check_size(message.session_id, SESSION_ID_SIZE, "session id")
        _check_size(message.server_nonce, NONCE_SIZE, "server nonce")
        _check_size(message.secret, SECRET_SIZE, "secret")
        if not 1 <= message.port <= 65535:
            raise LocalProtocolError(f"port {message.port} is not a TCP port")
        body = [
            "offer",
            message.session_id,
            message.server_nonce,
            message.port,
            message.secret,
            str(message.cipher),
        ]
    else:
        if not _CODE_PATTERN.fullmatch(message.code):
            raise LocalProtocolError(f"refuse code {message.code!r} is not a code")
        body = ["refuse", message.code, message.reason[:MAX_REASON]]
    return encode_frame(pack(body), MAX_SETUP_FRAME)


def _unpack_setup(data: bytes, what: str) -> list[object]:
    value = unpack(
        data,
        what=what,
        max_size=MAX_SETUP_FRAME,
        max_str_len=MAX_SETUP_FRAME,
        max_bin_len=MAX_SETUP_FRAME,
        max_array_len=_MAX_FIELDS,
        max_map_len=_MAX_FIELDS,
    )
    fields = expect_list(value, what=what, max_len=_MAX_FIELDS)
    if not fields:
        raise RemoteProtocolError(f"{what} is empty")
    return fields


def decode_open(data: bytes) -> Open:
    """The body of an OPEN frame.

    A version other than ours raises :class:`ChannelVersionError` before the rest is
    read, so a newer client gets a clean REFUSE whatever it appended.
    """
    fields = _unpack_setup(data, "OPEN")
    if fields[0] != "open" or len(fields) < 2:
        raise RemoteProtocolError("the first setup message must be OPEN")
    version = expect_int(fields[1], what="OPEN version", low=0, high=2**32 - 1)
    if version != VERSION:
        raise ChannelVersionError(version)
    if len(fields) != 4:
        raise RemoteProtocolError(f"OPEN version 1 has 4 fields, not {len(fields)}")
    nonce = expect_bytes(fields[2], what="client nonce", length=NONCE_SIZE, max_len=NONCE_SIZE)
    names = expect_list(fields[3], what="OPEN ciphers", max_len=_MAX_CIPHERS)
    if not names:
        raise RemoteProtocolError("OPEN lists no cipher")
    ciphers: list[Cipher] = []
    for name in names:
        text = expect_str(name, what="cipher name")
        if len(text) > _MAX_NAME:
            raise RemoteProtocolError("a cipher name is too long")
        if text in _CIPHER_NAMES and Cipher(text) not in ciphers:
            ciphers.append(Cipher(text))
    if not ciphers:
        raise NoCommonCipherError("the client supports none of " + ", ".join(Cipher))
    return Open(client_nonce=nonce, ciphers=tuple(ciphers), version=version)


def decode_reply(data: bytes) -> ChannelOffer | Refuse:
    """The body of the server's OFFER or REFUSE frame."""
    fields = _unpack_setup(data, "the data channel reply")
    kind = fields[0]
    if kind == "offer":
        if len(fields) != 6:
            raise RemoteProtocolError(f"OFFER has 6 fields, not {len(fields)}")
        session_id = expect_bytes(
            fields[1], what="session id", length=SESSION_ID_SIZE, max_len=SESSION_ID_SIZE
        )
        nonce = expect_bytes(fields[2], what="server nonce", length=NONCE_SIZE, max_len=NONCE_SIZE)
        port = expect_int(fields[3], what="port", low=1, high=65535)
        secret = expect_bytes(fields[4], what="secret", length=SECRET_SIZE, max_len=SECRET_SIZE)
        name = expect_str(fields[5], what="cipher")
        if name not in _CIPHER_NAMES:
            raise RemoteProtocolError(f"the server chose an unknown cipher {name[:_MAX_NAME]!r}")
        return ChannelOffer(session_id, nonce, port, secret, Cipher(name))
    if kind == "refuse":
        if len(fields) != 3:
            raise RemoteProtocolError(f"REFUSE has 3 fields, not {len(fields)}")
        code = expect_str(fields[1], what="refuse code")
        reason = expect_str(fields[2], what="refuse reason")
        if not _CODE_PATTERN.fullmatch(code) or len(reason) > MAX_REASON:
            raise RemoteProtocolError("REFUSE has a malformed code or an overlong reason")
        return Refuse(code, reason)
    raise RemoteProtocolError("the data channel reply is neither OFFER nor REFUSE")


def refusal_for(exc: RemoteError) -> Refuse:
    """The REFUSE a server sends for a failed OPEN."""
    if isinstance(exc, ChannelVersionError):
        return Refuse(RefuseCode.UNSUPPORTED_VERSION, f"this node speaks version {VERSION}")
    if isinstance(exc, NoCommonCipherError):
        return Refuse(RefuseCode.NO_COMMON_CIPHER, "supported: " + ", ".join(Cipher))
    if isinstance(exc, SessionLimitError):
        return Refuse(RefuseCode.BUSY, "too many data channels pending; use the libp2p stream")
    return Refuse(RefuseCode.BAD_REQUEST, "malformed OPEN")


def choose_cipher(offered: Sequence[Cipher], supported: Sequence[Cipher]) -> Cipher:
    """The client's most preferred cipher that the server supports."""
    for cipher in offered:
        if cipher in supported:
            return cipher
    raise NoCommonCipherError("no cipher in common")


def _check_size(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"{what} must have {size} bytes, not {len(value)}")


# --- key schedule ----------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """What both ends derive for one session; never printed."""

    session_id: bytes
    cipher: Cipher
    client_to_server: bytes
    server_to_client: bytes

    def __repr__(self) -> str:
        return f"SessionKeys(session_id={self.session_id.hex()}, cipher={self.cipher})"


def _length_prefixed(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def derive_keys(
    *,
    secret: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
    session_id: bytes,
    cipher: Cipher,
    client_peer: str,
    server_peer: str,
) -> SessionKeys:
    """HKDF-SHA256: one 32-byte key per direction.

    ``ikm`` is the fresh secret, ``salt`` both nonces, and ``info`` binds the domain,
    the cipher, both peer IDs and the session id, each length-prefixed, so no two
    sessions, directions or pairs of peers ever share a key.
    """
    _check_size(secret, SECRET_SIZE, "secret")
    _check_size(client_nonce, NONCE_SIZE, "client nonce")
    _check_size(server_nonce, NONCE_SIZE, "server nonce")
    _check_size(session_id, SESSION_ID_SIZE, "session id")
    info = b"".join(
        _length_prefixed(part)
        for part in (
            _DOMAIN + b" keys",
            str(cipher).encode(),
            client_peer.encode(),
            server_peer.encode(),
            session_id,
        )
    )
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_SIZE,
        salt=client_nonce + server_nonce,
        info=info,
    ).derive(secret)
    return SessionKeys(session_id, cipher, okm[:KEY_SIZE], okm[KEY_SIZE:])


def client_keys(
    request: Open, offer: ChannelOffer, *, client_peer: str, server_peer: str
) -> SessionKeys:
    """The client's keys for ``offer``; the chosen cipher must be one it asked for."""
    if offer.cipher not in request.ciphers:
        raise RemoteProtocolError(
            f"the server chose {offer.cipher}, which the client did not offer"
        )
    return derive_keys(
        secret=offer.secret,
        client_nonce=request.client_nonce,
        server_nonce=offer.server_nonce,
        session_id=offer.session_id,
        cipher=offer.cipher,
        client_peer=client_peer,
        server_peer=server_peer,
    )


# --- sessions (server side) -------------------------------------------------------------


@dataclass(frozen=True)
class PendingSession:
    """An offer not yet claimed by a TCP connection."""

    peer_id: str
    keys: SessionKeys
    expires: float


class SessionTable:
    """Offers made and not yet used: single use, bound to a peer, expiring.

    The shell passes the time (any monotonic clock) and the random values in.
    """

    def __init__(self, *, ttl: float, max_pending: int, max_pending_per_peer: int) -> None:
        self._ttl = ttl
        self._max_pending = max_pending
        self._max_per_peer = max_pending_per_peer
        self._pending: dict[bytes, PendingSession] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def pending_for(self, peer_id: str) -> int:
        return sum(1 for s in self._pending.values() if s.peer_id == peer_id)

    def expire(self, now: float) -> None:
        """Forget every offer whose time is up."""
        for session_id in [k for k, s in self._pending.items() if now >= s.expires]:
            del self._pending[session_id]

    def offer(
        self,
        request: Open,
        *,
        peer_id: str,
        server_peer: str,
        session_id: bytes,
        server_nonce: bytes,
        secret: bytes,
        port: int,
        now: float,
        supported: Sequence[Cipher] = DEFAULT_CIPHERS,
    ) -> ChannelOffer:
        """Record a new session for ``peer_id`` and return the OFFER to send it.

        Raises SessionLimitError when too many are pending, NoCommonCipherError when the
        client supports no cipher of ours.
        """
        self.expire(now)
        if len(self._pending) >= self._max_pending:
            raise SessionLimitError("too many data channel offers are pending")
        if self.pending_for(peer_id) >= self._max_per_peer:
            raise SessionLimitError(f"{peer_id} has too many data channel offers pending")
        if session_id in self._pending:
            raise LocalProtocolError("session id collision: the shell must draw 16 random bytes")
        cipher = choose_cipher(request.ciphers, supported)
        offer = ChannelOffer(session_id, server_nonce, port, secret, cipher)
        keys = derive_keys(
            secret=secret,
            client_nonce=request.client_nonce,
            server_nonce=server_nonce,
            session_id=session_id,
            cipher=cipher,
            client_peer=peer_id,
            server_peer=server_peer,
        )
        self._pending[session_id] = PendingSession(peer_id, keys, now + self._ttl)
        return offer

    def claim(self, session_id: bytes, now: float) -> PendingSession:
        """Take the session a TCP connection names; it can never be claimed again."""
        session = self._pending.pop(bytes(session_id), None)
        if session is None:
            raise UnknownSessionError("the connection names no pending session")
        if now >= session.expires:
            raise UnknownSessionError("the connection names an expired session")
        return session


# --- one end of an established channel -------------------------------------------------------


class Channel:
    """The crypto state of one end: a sealer for what it sends, an opener for what it gets.

    Handshake, client::

        channel = Channel(keys, Role.CLIENT)
        send(channel.client_hello())                 # session id + frame 0
        channel.accept_server_hello(recv_exact(SERVER_HELLO_SIZE))

    server, after ``keys = table.claim(recv_exact(SESSION_ID_SIZE), now).keys``::

        channel = Channel(keys, Role.SERVER)
        channel.accept_client_hello(recv_exact(CLIENT_HELLO_SIZE - SESSION_ID_SIZE))
        send(channel.server_hello())
    """

    def __init__(self, keys: SessionKeys, role: Role) -> None:
        self.role = role
        self.session_id = keys.session_id
        send_key, receive_key = (
            (keys.client_to_server, keys.server_to_client)
            if role is Role.CLIENT
            else (keys.server_to_client, keys.client_to_server)
        )
        self.sealer = FrameSealer(keys.cipher, send_key)
        self.opener = FrameOpener(keys.cipher, receive_key)

    def client_hello(self) -> bytes:
        self._expect(Role.CLIENT)
        return self.session_id + self.sealer.seal_hello(CLIENT_HELLO)

    def server_hello(self) -> bytes:
        self._expect(Role.SERVER)
        return self.sealer.seal_hello(SERVER_HELLO)

    def accept_client_hello(self, frame: BytesLike) -> None:
        """The client's frame 0 (without the session id in front)."""
        self._expect(Role.SERVER)
        self._accept(frame, CLIENT_HELLO)

    def accept_server_hello(self, frame: BytesLike) -> None:
        self._expect(Role.CLIENT)
        self._accept(frame, SERVER_HELLO)

    def _accept(self, frame: BytesLike, expected: bytes) -> None:
        if len(frame) != sealed_size(len(expected)):
            raise FrameAuthenticationError("the hello has the wrong size")
        length = self.opener.frame_length(memoryview(frame)[:HEADER_SIZE])
        if length != len(expected) + TAG_SIZE:
            raise FrameAuthenticationError("the hello has the wrong size")
        self.opener.open_hello(memoryview(frame)[HEADER_SIZE:], expected)

    def _expect(self, role: Role) -> None:
        if self.role is not role:
            raise LocalProtocolError(f"only the {role} end does this")
