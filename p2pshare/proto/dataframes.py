"""The data channel's AEAD frames: sealing, opening and reassembling them (sans-IO).

After the handshake (p2pshare.proto.datachannel) each direction of the TCP connection
is a sequence of frames::

    length u32 BE (ciphertext bytes, tag included) | AEAD(key, nonce = counter u96 BE, plaintext)

A plaintext is 1 byte .. 1 MiB; an empty plaintext is FIN, the authenticated end of
that direction.  Counters are implicit, so a dropped, replayed or reordered frame
fails authentication.  :class:`FrameReader` reassembles the received frames in the
one buffer the shell (p2pshare.net.encrypted_stream.EncryptedStream) receives into.
Normative description: docs/data-channel.md, section 3.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from p2pshare.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from p2pshare.proto.framing import HEADER_SIZE, FrameTooLargeError

if TYPE_CHECKING:
    from p2pshare.proto.chunks import BytesLike

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


class Cipher(StrEnum):
    """The AEADs a data channel may use; the client lists them by preference."""

    AES_256_GCM = "aes-256-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"


class FrameAuthenticationError(IntegrityError):
    """A frame failed authentication: corrupted, forged, replayed, reordered or dropped."""


class TruncatedStreamError(IntegrityError):
    """The connection ended without the peer's authenticated FIN."""


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
    shell's loop (p2pshare.net.encrypted_stream.EncryptedStream)::

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
