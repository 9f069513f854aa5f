"""The data channel: an encrypted TCP connection for bulk data, authorised over libp2p.

Sans-IO: messages, the key schedule, the session table, the AEAD frame layer and
the receive buffer that reassembles frames (:class:`FrameReader`).
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

after which both directions carry frames::

    length u32 BE (ciphertext bytes, tag included) | AEAD(key, nonce = counter u96 BE, plaintext)

A plaintext is 1 byte .. 1 MiB; an empty plaintext is FIN, the authenticated end of
that direction.  Counters are implicit, so a dropped, replayed or reordered frame
fails authentication.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pshare.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from p2pshare.proto.canonical import (
    expect_bytes,
    expect_int,
    expect_list,
    expect_str,
    pack,
    unpack,
)
from p2pshare.proto.framing import HEADER_SIZE, FrameTooLargeError, encode_frame
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
TAG_SIZE: Final = 16
# The largest plaintext of one frame: big enough that Python's work per byte stays
# near zero, small enough to hold two of them per connection.
MAX_PLAINTEXT: Final = 1 << 20
MAX_CIPHERTEXT: Final = MAX_PLAINTEXT + TAG_SIZE
MAX_WIRE_FRAME: Final = HEADER_SIZE + MAX_CIPHERTEXT
# The receive buffer starts small (setup and control traffic never need more) and
# grows once to hold a whole frame plus what one read brings beyond it.
INITIAL_RECEIVE_BUFFER: Final = 64 * 1024
MAX_RECEIVE_BUFFER: Final = MAX_WIRE_FRAME + 64 * 1024
# Frames per direction before the channel refuses to go on (4 PiB at 1 MiB frames):
# far below the 2^96 nonces, and where AES-GCM's bounds are still comfortable.
MAX_FRAMES: Final = 1 << 32
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


class Cipher(StrEnum):
    """The AEADs a data channel may use; the client lists them by preference."""

    AES_256_GCM = "aes-256-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"


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


class FrameAuthenticationError(IntegrityError):
    """A frame failed authentication: corrupted, forged, replayed, reordered or dropped."""


class TruncatedStreamError(IntegrityError):
    """The connection ended without the peer's authenticated FIN."""


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


# --- frames --------------------------------------------------------------------------------


def _aead(cipher: Cipher, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher is Cipher.AES_256_GCM:
        return AESGCM(key)
    return ChaCha20Poly1305(key)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


def sealed_size(plaintext_size: int) -> int:
    """Bytes on the wire for a frame of ``plaintext_size`` plaintext bytes."""
    return HEADER_SIZE + plaintext_size + TAG_SIZE


class FrameSealer:
    """Encrypts what one end sends: frame ``n`` under nonce ``n``, never twice."""

    def __init__(self, cipher: Cipher, key: bytes, *, max_frames: int = MAX_FRAMES) -> None:
        self._aead = _aead(cipher, key)
        self._counter = 0
        self._max_frames = max_frames
        self._finished = False

    @property
    def counter(self) -> int:
        """The nonce of the next frame (the number of frames sealed so far)."""
        return self._counter

    @property
    def finished(self) -> bool:
        return self._finished

    def _next_nonce(self) -> bytes:
        if self._finished:
            raise LocalProtocolError("this direction of the data channel is closed (FIN sent)")
        if self._counter >= self._max_frames:
            raise LocalProtocolError("the data channel used up its frames; open a new one")
        # Advance first: even a failed encryption never gets its nonce back.
        counter = self._counter
        self._counter += 1
        return _nonce(counter)

    def seal_into(self, plaintext: BytesLike, out: memoryview | bytearray) -> int:
        """Write the frame for ``plaintext`` (1 .. MAX_PLAINTEXT bytes) to ``out``; its size."""
        size = len(plaintext)
        if not 1 <= size <= MAX_PLAINTEXT:
            raise LocalProtocolError(f"a data frame carries 1 .. {MAX_PLAINTEXT} bytes, not {size}")
        return self._seal_into(plaintext, out)

    def _seal_into(self, plaintext: BytesLike, out: memoryview | bytearray) -> int:
        size = len(plaintext)
        total = sealed_size(size)
        if len(out) < total:
            raise LocalProtocolError(f"a frame of {size} bytes needs a {total} byte buffer")
        nonce = self._next_nonce()
        view = memoryview(out)
        view[:HEADER_SIZE] = (size + TAG_SIZE).to_bytes(HEADER_SIZE, "big")
        self._aead.encrypt_into(nonce, plaintext, None, view[HEADER_SIZE:total])
        return total

    def seal(self, plaintext: BytesLike) -> bytes:
        """The frame for ``plaintext`` as new bytes."""
        out = bytearray(sealed_size(len(plaintext)))
        self.seal_into(plaintext, out)
        return bytes(out)

    def seal_fin(self) -> bytes:
        """The FIN frame; nothing can be sealed after it."""
        out = bytearray(sealed_size(0))
        self._seal_into(b"", out)
        self._finished = True
        return bytes(out)

    def seal_hello(self, text: bytes) -> bytes:
        """Frame 0 of a handshake (the shells use :class:`Channel`)."""
        if self._counter != 0:
            raise LocalProtocolError("the hello must be the first frame")
        return self.seal(text)


class FrameOpener:
    """Checks and decrypts what the peer sends, frame ``n`` under nonce ``n``.

    Any failure is final: the opener refuses every later frame, since the stream has
    lost either its framing or its integrity.
    """

    def __init__(self, cipher: Cipher, key: bytes, *, max_frames: int = MAX_FRAMES) -> None:
        self._aead = _aead(cipher, key)
        self._counter = 0
        self._max_frames = max_frames
        self._finished = False
        self._failed = False

    @property
    def counter(self) -> int:
        return self._counter

    @property
    def finished(self) -> bool:
        """True once the peer's FIN was authenticated."""
        return self._finished

    def _check_usable(self) -> None:
        if self._failed:
            raise RemoteProtocolError("the data channel has already failed")
        if self._finished:
            self._failed = True
            raise RemoteProtocolError("the peer sent data after its FIN")

    def frame_length(self, header: BytesLike) -> int:
        """Ciphertext bytes that follow this 4-byte header; checks the bounds first."""
        self._check_usable()
        if len(header) != HEADER_SIZE:
            raise LocalProtocolError(f"a frame header has {HEADER_SIZE} bytes")
        length = int.from_bytes(header, "big")
        if length > MAX_CIPHERTEXT:
            self._failed = True
            raise FrameTooLargeError(
                f"data frame of {length} bytes exceeds the {MAX_CIPHERTEXT} byte limit"
            )
        if length < TAG_SIZE:
            self._failed = True
            raise RemoteProtocolError(f"data frame of {length} bytes is shorter than its tag")
        return length

    def decrypt(self, ciphertext: BytesLike) -> bytes:
        """The plaintext of the next frame; ``b""`` is the peer's FIN."""
        self._check_usable()
        if not TAG_SIZE <= len(ciphertext) <= MAX_CIPHERTEXT:
            self._failed = True
            raise RemoteProtocolError(f"data frame of {len(ciphertext)} bytes is out of bounds")
        if self._counter >= self._max_frames:
            self._failed = True
            raise RemoteProtocolError("the peer sent more frames than a channel may carry")
        counter = self._counter
        try:
            plaintext = self._aead.decrypt(_nonce(counter), ciphertext, None)
        except InvalidTag:
            self._failed = True
            raise FrameAuthenticationError(
                f"data frame {counter} failed authentication"
                " (corrupted, forged, replayed, reordered or dropped)"
            ) from None
        self._counter += 1
        if not plaintext:
            self._finished = True
        return plaintext

    def open_hello(self, ciphertext: BytesLike, expected: bytes) -> None:
        """Frame 0 must be exactly the peer's hello."""
        if self._counter != 0:
            raise LocalProtocolError("the hello is the first frame")
        if len(ciphertext) != len(expected) + TAG_SIZE:
            self._failed = True
            raise FrameAuthenticationError("the hello frame has the wrong size")
        if self.decrypt(ciphertext) != expected:
            self._failed = True
            raise FrameAuthenticationError("the hello frame does not hold the expected hello")


class FrameReader:
    """Reassembles the peer's frames in one receive buffer that the shell fills in place.

    In the manner of h11's receive buffer, but shaped for ``recv_into``: the shell
    reads straight into :meth:`free_space`, so no bytes are joined, sliced or copied
    per read, and the AEAD opens each frame from a view of the same buffer.  The
    shell's loop (p2pshare.net.datachannel.EncryptedStream)::

        while (ciphertext := reader.next_ciphertext()) is None:
            set_rcvlowat(reader.wanted())         # wake once the frame is whole
            received = sock.recv_into(reader.free_space())
            if not received:
                reader.end_of_stream()            # raises TruncatedStreamError
            reader.advance(received)
        plaintext = reader.decrypt(ciphertext)    # inline, or in a worker thread

    ``decrypt`` returns ``b""`` for the peer's FIN, after which nothing may follow.
    The buffer starts at INITIAL_RECEIVE_BUFFER and grows once, to MAX_RECEIVE_BUFFER,
    when a frame's header announces more than fits; the length is checked from the
    header's 4 bytes before that.  Every error is final.
    """

    def __init__(self, opener: FrameOpener) -> None:
        self._opener = opener
        self._buffer = bytearray(INITIAL_RECEIVE_BUFFER)
        self._start = 0  # the first byte not yet taken
        self._end = 0  # the end of the bytes received
        self._length: int | None = None  # ciphertext bytes announced by the header taken

    def _take_header(self) -> int | None:
        """The ciphertext length the next frame announces, once its header is in."""
        if self._length is None and self._end - self._start >= HEADER_SIZE:
            header = self._buffer[self._start : self._start + HEADER_SIZE]
            self._length = self._opener.frame_length(header)
            self._start += HEADER_SIZE
        return self._length

    def wanted(self) -> int:
        """Bytes to receive before :meth:`next_ciphertext` has a frame; 0 if it has one.

        The peer announced them (in a header, or they are a header), so the shell may
        ask the kernel to report the socket readable only once they are in.
        """
        length = self._take_header()
        available = self._end - self._start
        return HEADER_SIZE - available if length is None else max(0, length - available)

    def free_space(self) -> memoryview:
        """Where the shell receives into: the buffer's free end, at least ``wanted()`` bytes.

        Views handed out before (a ciphertext not yet decrypted) may be overwritten.
        """
        wanted = max(self.wanted(), 1)
        available = self._end - self._start
        if not available:
            self._start = self._end = 0
        if len(self._buffer) - self._end < wanted:
            if available + wanted > len(self._buffer):
                grown = bytearray(MAX_RECEIVE_BUFFER)
                grown[:available] = self._buffer[self._start : self._end]
                self._buffer = grown
            else:
                self._buffer[:available] = self._buffer[self._start : self._end]
            self._start, self._end = 0, available
        return memoryview(self._buffer)[self._end :]

    def advance(self, received: int) -> None:
        """``received`` bytes were written at the start of :meth:`free_space`."""
        if not 0 <= received <= len(self._buffer) - self._end:
            raise LocalProtocolError(f"{received} bytes do not fit the free space")
        if received and self._opener.finished:
            raise RemoteProtocolError("the peer sent data after its FIN")
        self._end += received

    def next_ciphertext(self) -> memoryview | None:
        """The next whole frame's ciphertext, or None while :meth:`wanted` is above 0.

        A view of the buffer, valid until the next :meth:`free_space`: decrypt it first.
        """
        length = self._take_header()
        if length is None or self._end - self._start < length:
            return None
        start = self._start
        self._start += length
        self._length = None
        return memoryview(self._buffer)[start : start + length]

    def decrypt(self, ciphertext: BytesLike) -> bytes:
        """The plaintext of the frame :meth:`next_ciphertext` returned; ``b""`` is the FIN.

        Touches only the opener and this reader's counters, so it may run in a worker
        thread while the receiving task waits for it.
        """
        plaintext = self._opener.decrypt(ciphertext)
        if not plaintext and self._end > self._start:
            raise RemoteProtocolError("the peer sent data after its FIN")
        return plaintext

    def end_of_stream(self, peer: str = "the peer") -> None:
        """The transport ended: fine after the FIN, a truncation otherwise."""
        if not self._opener.finished:
            partial = self._end - self._start + (HEADER_SIZE if self._length is not None else 0)
            raise TruncatedStreamError(
                f"the data channel from {peer} ended without its FIN"
                " (the peer failed, or the connection was cut)"
                + (f"; {partial} bytes of a frame were pending" if partial else "")
            )


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
