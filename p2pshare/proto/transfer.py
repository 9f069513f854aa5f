"""The transfer protocol: a downloader (client) fetching manifests, hash pages and chunks.

Sans-IO: this module turns messages into bytes and bytes into messages, and keeps
the per-stream bookkeeping of both sides; the uploader and downloader shells own
the stream, the files and the clock.  Normative description: docs/transfer-protocol.md.

Frame layout, on one bidirectional byte stream::

    length (4 bytes, big-endian, as p2pshare.proto.framing) | type (1 byte) | body

Every body is a msgpack array, except DATA's: a fixed 8-byte header (request id,
chunk index) followed by the raw chunk, so a received chunk is a slice of the
received bytes and is never copied through msgpack.  The decoder checks the type
byte and that type's size limit as soon as the first five bytes are in, before it
buffers any body.

Typical use (client)::

    session, decoder = ClientSession(), TransferDecoder(Role.CLIENT)
    send(encode(session.hello()))
    send(encode(session.get_chunks(cid, 0, 64, chunk_length)))
    decoder.feed(received)
    while (message := decoder.next_message()) is not None:
        response = session.receive(message)   # None for the server's HELLO
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

from p2pshare.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.canonical import pack, unpack
from p2pshare.proto.chunks import HASH_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, BytesLike
from p2pshare.proto.cid import CID_BYTES, ContentId
from p2pshare.proto.framing import HEADER_SIZE, FrameTooLargeError, encode_frame
from p2pshare.proto.manifest import MAX_MANIFEST_SIZE, MAX_PAGES, MAX_TOTAL_CHUNKS
from p2pshare.proto.pages import PAGE_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable

PROTOCOL_ID: Final = "/p2pshare/transfer/1.0.0"
VERSION: Final = 1

# Control frames (HELLO, ERROR, GET_*, REQUEST, CANCEL) are a few dozen bytes; 64 KiB
# leaves later versions room while bounding what a stream can make us buffer.
MAX_CONTROL_FRAME: Final = 64 * 1024
# MANIFEST, PAGE and HAVE carry at most 1 MiB of payload, plus their msgpack fields.
MAX_REPLY_FRAME: Final = MAX_MANIFEST_SIZE + 1024
# DATA: type byte, request id, chunk index, then the chunk.
DATA_HEADER_SIZE: Final = 9
MAX_REQ_ID: Final = 2**32 - 1
# 64 chunks (64 MiB at the default chunk size) per REQUEST: large enough that one
# request per peer keeps a fast link busy, small enough to cancel cheaply.
MAX_CHUNKS_PER_REQUEST: Final = 64
# Requests of every kind a client may have outstanding on one stream.
MAX_OUTSTANDING_REQUESTS: Final = 16
# A HAVE bitfield of at most 1 MiB; larger shares are asked about in ranges.
MAX_HAVE_CHUNKS: Final = 8 * 1024 * 1024
MAX_ERROR_MESSAGE: Final = 1024
_MAX_CODE = 32
_MAX_ROLE = 16
# HELLO is [version, role, ...]: later versions may append fields, which v1 ignores.
_MAX_HELLO_FIELDS = 16
_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_DATA_HEADER = struct.Struct(">BII")
# A DATA frame up to its chunk: the length prefix and the DATA header.
_DATA_FRAME_HEAD: Final = HEADER_SIZE + DATA_HEADER_SIZE


class Role(StrEnum):
    """Which end of a stream: the client asks (for chunks, a data channel), the server answers."""

    CLIENT = "client"
    SERVER = "server"


class MessageType(IntEnum):
    """The type byte of each frame."""

    HELLO = 0x01
    ERROR = 0x02
    GET_MANIFEST = 0x10
    MANIFEST = 0x11
    GET_PAGE = 0x12
    PAGE = 0x13
    GET_HAVE = 0x14
    HAVE = 0x15
    REQUEST = 0x20
    DATA = 0x21
    CANCEL = 0x22


class ErrorCode:
    """The ``code`` of ERROR frames.  Unknown codes from newer peers are kept as is."""

    UNKNOWN_CONTENT = "unknown_content"
    NOT_AVAILABLE = "not_available"
    BAD_REQUEST = "bad_request"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    CANCELLED = "cancelled"
    UNSUPPORTED_VERSION = "unsupported_version"
    INTERNAL = "internal"


# --- errors --------------------------------------------------------------------------


class TransferError(RemoteError):
    """An error that travels in an ERROR frame; ``code`` names it on the wire.

    Raised by the sessions for a connection-level ERROR (request id 0) from the peer,
    and built by the shells (``ServerSession.fail``) to refuse one request.  A code
    this version does not know gives a plain TransferError carrying that code.
    """

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, req_id: int = 0, code: str | None = None) -> None:
        super().__init__(message or f"the peer reported {code or self.code}")
        self.req_id = req_id
        if code is not None:
            self.code = code


class UnknownContentError(TransferError):
    """The uploader does not share this content ID."""

    code = ErrorCode.UNKNOWN_CONTENT


class NotAvailableError(TransferError):
    """The uploader shares the content but cannot serve these chunks (not held, or stale)."""

    code = ErrorCode.NOT_AVAILABLE


class BadRequestError(TransferError):
    """The request is well formed but impossible (e.g. chunks beyond the share's end)."""

    code = ErrorCode.BAD_REQUEST


class BusyError(TransferError):
    """Too many requests outstanding for this peer; retry after some complete."""

    code = ErrorCode.BUSY


class RateLimitedError(TransferError):
    """The uploader is throttling this peer; retry later or elsewhere."""

    code = ErrorCode.RATE_LIMITED


class RequestCancelledError(TransferError):
    """Ends a request the client cancelled."""

    code = ErrorCode.CANCELLED


class UnsupportedVersionError(TransferError):
    """The two ends speak different versions of the transfer protocol."""

    code = ErrorCode.UNSUPPORTED_VERSION


class PeerInternalError(TransferError):
    """The peer failed for reasons of its own (a bug or a local I/O failure)."""

    code = ErrorCode.INTERNAL


_ERROR_TYPES: dict[str, type[TransferError]] = {
    cls.code: cls
    for cls in (
        UnknownContentError,
        NotAvailableError,
        BadRequestError,
        BusyError,
        RateLimitedError,
        RequestCancelledError,
        UnsupportedVersionError,
        PeerInternalError,
    )
}


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First frame in each direction: the client's version, then the server's answer."""

    version: int
    role: Role


@dataclass(frozen=True)
class ErrorReply:
    """ERROR: ends request ``req_id`` with a failure, or (``req_id`` 0) the whole stream."""

    req_id: int
    code: str
    message: str

    def exception(self) -> TransferError:
        """The typed exception for this error; the peer's text is made printable."""
        text = "".join(c if c.isprintable() else "?" for c in self.message)
        cls = _ERROR_TYPES.get(self.code, TransferError)
        return cls(f"peer: {text}", req_id=self.req_id, code=self.code)


@dataclass(frozen=True)
class GetManifest:
    req_id: int
    cid: ContentId


@dataclass(frozen=True)
class ManifestReply:
    """The signed manifest bytes; check them with ``decode_signed_manifest(data, cid)``."""

    req_id: int
    cid: ContentId
    data: bytes


@dataclass(frozen=True)
class GetPage:
    req_id: int
    cid: ContentId
    page_index: int


@dataclass(frozen=True)
class PageReply:
    """A hash page; check it with ``manifest.verify_page(manifest, page_index, page)``."""

    req_id: int
    cid: ContentId
    page_index: int
    page: bytes


@dataclass(frozen=True)
class GetHave:
    """Which of chunks ``[first_chunk, first_chunk + count)`` can the server send?"""

    req_id: int
    cid: ContentId
    first_chunk: int
    count: int


@dataclass(frozen=True)
class HaveReply:
    """Bit ``i`` of ``have`` is chunk ``first_chunk + i``; ``len(have)`` is the asked count."""

    req_id: int
    cid: ContentId
    first_chunk: int
    have: Bitfield


@dataclass(frozen=True)
class ChunkRequest:
    """REQUEST: send chunks ``[first_chunk, first_chunk + count)`` of ``cid``, in order."""

    req_id: int
    cid: ContentId
    first_chunk: int
    count: int

    @property
    def chunks(self) -> range:
        return range(self.first_chunk, self.first_chunk + self.count)


@dataclass(frozen=True)
class ChunkData:
    """DATA: one chunk of a request.  Decoded payloads are read-only views of the frame."""

    req_id: int
    chunk_index: int
    payload: BytesLike = field(repr=False)


@dataclass(frozen=True)
class Cancel:
    """The client no longer wants the rest of request ``req_id``."""

    req_id: int


ClientMessage: TypeAlias = (
    Hello | ErrorReply | GetManifest | GetPage | GetHave | ChunkRequest | Cancel
)
ServerMessage: TypeAlias = Hello | ErrorReply | ManifestReply | PageReply | HaveReply | ChunkData
Message: TypeAlias = ClientMessage | ServerMessage
ClientRequest: TypeAlias = GetManifest | GetPage | GetHave | ChunkRequest
Reply: TypeAlias = ManifestReply | PageReply | HaveReply

_ALL_TYPES: Final = frozenset(MessageType)
# What each side may receive: a server never gets DATA, so it never buffers 16 MiB.
_ACCEPTS: Final = {
    Role.SERVER: frozenset(
        {
            MessageType.HELLO,
            MessageType.ERROR,
            MessageType.GET_MANIFEST,
            MessageType.GET_PAGE,
            MessageType.GET_HAVE,
            MessageType.REQUEST,
            MessageType.CANCEL,
        }
    ),
    Role.CLIENT: frozenset(
        {
            MessageType.HELLO,
            MessageType.ERROR,
            MessageType.MANIFEST,
            MessageType.PAGE,
            MessageType.HAVE,
            MessageType.DATA,
        }
    ),
}
_REPLY_TYPES: Final = frozenset({MessageType.MANIFEST, MessageType.PAGE, MessageType.HAVE})


# --- field checks, shared by encoder (LocalProtocolError) and decoder ----------------


def _int(value: object, what: str, low: int, high: int) -> int:
    # bool is an int subclass with its own msgpack encoding; it is not an integer here.
    if type(value) is not int or not low <= value <= high:
        raise RemoteProtocolError(f"{what} must be an integer from {low} to {high}")
    return value


def _bin(value: object, what: str, low: int, high: int) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        raise RemoteProtocolError(f"{what} must be {low} to {high} bytes of binary")
    return value


def _str(value: object, what: str, high: int) -> str:
    # msgpack limits strings in bytes; this bounds the characters a peer can make us show.
    if type(value) is not str or len(value) > high:
        raise RemoteProtocolError(f"{what} must be a string of at most {high} characters")
    return value


def _req_id(value: object, *, zero_ok: bool = False) -> int:
    return _int(value, "request id", 0 if zero_ok else 1, MAX_REQ_ID)


def _cid(value: object) -> ContentId:
    return ContentId.from_bytes(_bin(value, "content ID", CID_BYTES, CID_BYTES))


def _chunk_range(first: object, count: object, max_count: int) -> tuple[int, int]:
    first_chunk = _int(first, "first chunk", 0, MAX_TOTAL_CHUNKS - 1)
    chunk_count = _int(count, "chunk count", 1, max_count)
    if first_chunk + chunk_count > MAX_TOTAL_CHUNKS:
        raise RemoteProtocolError(f"chunks beyond {MAX_TOTAL_CHUNKS} do not exist")
    return first_chunk, chunk_count


def _fields(value: object, n: int, what: str, extra_ok: bool = False) -> list[object]:
    if not isinstance(value, list) or len(value) < n or (len(value) > n and not extra_ok):
        raise RemoteProtocolError(f"{what} must be an array of {n} fields")
    return value


def _parse_hello(value: object) -> Hello:
    version, role = _fields(value, 2, "HELLO", extra_ok=True)[:2]
    role_text = _str(role, "role", _MAX_ROLE)
    try:
        hello_role = Role(role_text)
    except ValueError:
        raise RemoteProtocolError(f"role {role_text!r} is neither client nor server") from None
    return Hello(_int(version, "version", 0, MAX_REQ_ID), hello_role)


def _parse_error(value: object) -> ErrorReply:
    req_id, code, message = _fields(value, 3, "ERROR")
    code_text = _str(code, "error code", _MAX_CODE)
    if not _CODE_PATTERN.fullmatch(code_text):
        raise RemoteProtocolError("an error code is lower-case letters, digits and _")
    return ErrorReply(
        _req_id(req_id, zero_ok=True), code_text, _str(message, "error message", MAX_ERROR_MESSAGE)
    )


def _parse_get_manifest(value: object) -> GetManifest:
    req_id, cid = _fields(value, 2, "GET_MANIFEST")
    return GetManifest(_req_id(req_id), _cid(cid))


def _parse_manifest(value: object) -> ManifestReply:
    req_id, cid, data = _fields(value, 3, "MANIFEST")
    return ManifestReply(
        _req_id(req_id), _cid(cid), _bin(data, "signed manifest", 1, MAX_MANIFEST_SIZE)
    )


def _parse_get_page(value: object) -> GetPage:
    req_id, cid, page_index = _fields(value, 3, "GET_PAGE")
    return GetPage(_req_id(req_id), _cid(cid), _int(page_index, "page", 0, MAX_PAGES - 1))


def _parse_page(value: object) -> PageReply:
    req_id, cid, page_index, page = _fields(value, 4, "PAGE")
    page_bytes = _bin(page, "hash page", HASH_SIZE, PAGE_SIZE)
    if len(page_bytes) % HASH_SIZE:
        raise RemoteProtocolError("a hash page is a whole number of 32-byte hashes")
    return PageReply(
        _req_id(req_id), _cid(cid), _int(page_index, "page", 0, MAX_PAGES - 1), page_bytes
    )


def _parse_get_have(value: object) -> GetHave:
    req_id, cid, first, count = _fields(value, 4, "GET_HAVE")
    return GetHave(_req_id(req_id), _cid(cid), *_chunk_range(first, count, MAX_HAVE_CHUNKS))


def _parse_have(value: object) -> HaveReply:
    req_id, cid, first, count, bits = _fields(value, 5, "HAVE")
    first_chunk, chunk_count = _chunk_range(first, count, MAX_HAVE_CHUNKS)
    have = Bitfield.from_bytes(_bin(bits, "bitfield", 1, MAX_HAVE_CHUNKS // 8), chunk_count)
    return HaveReply(_req_id(req_id), _cid(cid), first_chunk, have)


def _parse_request(value: object) -> ChunkRequest:
    req_id, cid, first, count = _fields(value, 4, "REQUEST")
    return ChunkRequest(
        _req_id(req_id), _cid(cid), *_chunk_range(first, count, MAX_CHUNKS_PER_REQUEST)
    )


def _parse_cancel(value: object) -> Cancel:
    (req_id,) = _fields(value, 1, "CANCEL")
    return Cancel(_req_id(req_id))


# Every type but DATA, whose body is binary (TransferDecoder._decode).
_PARSERS: Final[dict[MessageType, Callable[[object], Message]]] = {
    MessageType.HELLO: _parse_hello,
    MessageType.ERROR: _parse_error,
    MessageType.GET_MANIFEST: _parse_get_manifest,
    MessageType.MANIFEST: _parse_manifest,
    MessageType.GET_PAGE: _parse_get_page,
    MessageType.PAGE: _parse_page,
    MessageType.GET_HAVE: _parse_get_have,
    MessageType.HAVE: _parse_have,
    MessageType.REQUEST: _parse_request,
    MessageType.CANCEL: _parse_cancel,
}


def _values(message: Message) -> tuple[MessageType, list[object]]:  # noqa: PLR0911 -- a case per type
    """The frame type and msgpack fields of a non-DATA message."""
    match message:
        case Hello(version=version, role=role):
            return MessageType.HELLO, [version, str(role)]
        case ErrorReply(req_id=req_id, code=code, message=text):
            return MessageType.ERROR, [req_id, code, text]
        case GetManifest(req_id=req_id, cid=cid):
            return MessageType.GET_MANIFEST, [req_id, cid.to_bytes()]
        case ManifestReply(req_id=req_id, cid=cid, data=data):
            return MessageType.MANIFEST, [req_id, cid.to_bytes(), data]
        case GetPage(req_id=req_id, cid=cid, page_index=page_index):
            return MessageType.GET_PAGE, [req_id, cid.to_bytes(), page_index]
        case PageReply(req_id=req_id, cid=cid, page_index=page_index, page=page):
            return MessageType.PAGE, [req_id, cid.to_bytes(), page_index, page]
        case GetHave(req_id=req_id, cid=cid, first_chunk=first, count=count):
            return MessageType.GET_HAVE, [req_id, cid.to_bytes(), first, count]
        case HaveReply(req_id=req_id, cid=cid, first_chunk=first, have=have):
            return MessageType.HAVE, [req_id, cid.to_bytes(), first, len(have), have.to_bytes()]
        case ChunkRequest(req_id=req_id, cid=cid, first_chunk=first, count=count):
            return MessageType.REQUEST, [req_id, cid.to_bytes(), first, count]
        case Cancel(req_id=req_id):
            return MessageType.CANCEL, [req_id]
    raise LocalProtocolError(f"{message!r} is not a transfer message")


def _frame_limit(kind: MessageType, max_chunk_size: int) -> int:
    if kind is MessageType.DATA:
        return DATA_HEADER_SIZE + max_chunk_size
    return MAX_REPLY_FRAME if kind in _REPLY_TYPES else MAX_CONTROL_FRAME


# --- encoding ------------------------------------------------------------------------


def encode_data_header(req_id: int, chunk_index: int, length: int) -> bytes:
    """The frame header of a DATA frame whose ``length``-byte chunk the caller sends next.

    Lets an uploader write header and chunk separately instead of joining them.
    """
    try:
        _req_id(req_id)
        _int(chunk_index, "chunk index", 0, MAX_TOTAL_CHUNKS - 1)
        _int(length, "chunk length", 1, MAX_CHUNK_SIZE)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"invalid DATA frame: {exc}") from exc
    return (DATA_HEADER_SIZE + length).to_bytes(HEADER_SIZE, "big") + _DATA_HEADER.pack(
        MessageType.DATA, req_id, chunk_index
    )


def encode(message: Message) -> bytes:
    """One frame holding ``message``; LocalProtocolError if the protocol forbids it.

    Every field passes the decoder's own checks first, so we never send what a peer
    running this code would refuse.
    """
    if isinstance(message, ChunkData):
        payload = message.payload
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise LocalProtocolError("a chunk payload must be bytes-like")
        return b"".join(
            (encode_data_header(message.req_id, message.chunk_index, len(payload)), payload)
        )
    try:
        kind, values = _values(message)
        if _PARSERS[kind](values) != message:
            raise RemoteProtocolError(f"{message!r} does not survive a round trip")
        body = pack(values)
    # AttributeError: a field of the wrong type (say, a str where a ContentId belongs).
    except (RemoteProtocolError, AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"invalid message {message!r}: {exc}") from exc
    return encode_frame(bytes([kind]) + body, _frame_limit(kind, MAX_CHUNK_SIZE))


# --- decoding ------------------------------------------------------------------------


class TransferDecoder:
    """Turn the bytes one side receives, fed in pieces of any size, into messages.

    ``side`` is the role of the receiving end: a server's decoder refuses DATA and the
    replies, a client's refuses requests.  ``max_chunk_size`` (the largest chunk size
    the client expects, MAX_CHUNK_SIZE by default) bounds DATA frames.

    Frames that arrive whole in one fed ``bytes`` object are sliced, not copied, and
    so is a DATA chunk that arrives whole in one feed after its header came in
    earlier ones (a data channel delivers header and chunk as separate plaintexts);
    any other frame split across feeds is gathered once.  Every error is final: the decoder
    raises it again on any later call, and the stream should be closed (after an
    ERROR frame, see ``closing_error``).
    """

    def __init__(self, side: Role, *, max_chunk_size: int = MAX_CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= max_chunk_size <= MAX_CHUNK_SIZE:
            raise LocalProtocolError(f"max_chunk_size {max_chunk_size} is out of range")
        self._accepts = _ACCEPTS[Role(side)]
        self._limits = {kind: _frame_limit(kind, max_chunk_size) for kind in self._accepts}
        self._max_frame = max(self._limits.values())
        # The unparsed stream is _buffer + _view; _buffer, when not empty, holds the
        # start of one frame and is completed from _view before anything else.
        self._buffer = bytearray()
        self._view = memoryview(b"")
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer) + len(self._view)

    def feed(self, data: BytesLike) -> None:
        """Append received bytes.  ``bytes`` are kept by reference, anything else copied."""
        if not data:
            return
        if self._view:
            # Fed again before next_message() drained the last piece (so _buffer is
            # empty): keep the stream in order by joining the two pieces.
            data = b"".join((self._view, data))
        self._view = memoryview(data if type(data) is bytes else bytes(data))

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes are fed.

        Raises RemoteProtocolError (FrameTooLargeError for an oversize frame) as soon
        as the frame header or body shows the stream breaks the protocol.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _frame_size(self, header: BytesLike) -> int | None:
        """Total bytes of the frame starting with ``header``; None if too little is known."""
        if len(header) < HEADER_SIZE:
            return None
        length = int.from_bytes(header[:HEADER_SIZE], "big")
        if length > self._max_frame:
            raise FrameTooLargeError(f"frame of {length} bytes exceeds the {self._max_frame} limit")
        if length == 0:
            raise RemoteProtocolError("an empty frame has no message type")
        if len(header) == HEADER_SIZE:
            return None
        code = header[HEADER_SIZE]
        if code not in _ALL_TYPES:
            raise RemoteProtocolError(f"unknown message type 0x{code:02x}")
        kind = MessageType(code)
        if kind not in self._accepts:
            raise RemoteProtocolError(f"a {kind.name} frame cannot be sent to this side")
        if length > self._limits[kind]:
            raise FrameTooLargeError(
                f"{kind.name} frame of {length} bytes exceeds its {self._limits[kind]} limit"
            )
        return HEADER_SIZE + length

    def _next(self) -> Message | None:
        if not self._buffer:
            return self._next_unbuffered()
        # Complete the frame in _buffer: first its header, then exactly its body.
        size = self._frame_size(self._buffer)
        if size is None:
            self._take(HEADER_SIZE + 1 - len(self._buffer))
            size = self._frame_size(self._buffer)
            if size is None:
                return None
        if self._buffer[HEADER_SIZE] == MessageType.DATA and size > _DATA_FRAME_HEAD:
            chunk = self._split_chunk(size)
            if chunk is not None:
                return chunk
        self._take(size - len(self._buffer))
        if len(self._buffer) < size:
            return None
        # Hand the buffer itself over: no copy, and nobody writes to it again.
        frame = memoryview(self._buffer).toreadonly()[HEADER_SIZE:]
        self._buffer = bytearray()
        return self._decode(frame)

    def _next_unbuffered(self) -> Message | None:
        """A frame wholly in _view, sliced; else what there is of it goes to _buffer."""
        if not self._view:
            return None
        size = self._frame_size(self._view[: HEADER_SIZE + 1])
        if size is not None and len(self._view) >= size:
            frame = self._view[HEADER_SIZE:size]
            self._view = self._view[size:]
            return self._decode(frame)
        self._buffer += self._view
        self._view = memoryview(b"")
        return None

    def _split_chunk(self, size: int) -> Message | None:
        """The DATA frame in _buffer if its chunk is all in _view: the chunk is sliced."""
        if len(self._buffer) > _DATA_FRAME_HEAD:
            return None
        self._take(_DATA_FRAME_HEAD - len(self._buffer))
        chunk_size = size - _DATA_FRAME_HEAD
        if len(self._buffer) < _DATA_FRAME_HEAD or len(self._view) < chunk_size:
            return None
        head = memoryview(bytes(self._buffer))[HEADER_SIZE:]
        self._buffer = bytearray()
        chunk = self._view[:chunk_size]
        self._view = self._view[chunk_size:]
        return self._decode_data(head, chunk)

    def _take(self, n: int) -> None:
        self._buffer += self._view[:n]
        self._view = self._view[n:]

    def _decode(self, frame: memoryview) -> Message:
        kind = MessageType(frame[0])
        if kind is MessageType.DATA:
            if len(frame) <= DATA_HEADER_SIZE:
                raise RemoteProtocolError("a DATA frame carries at least one byte of chunk")
            return self._decode_data(frame[:DATA_HEADER_SIZE], frame[DATA_HEADER_SIZE:])
        limit = self._limits[kind]
        value = unpack(
            bytes(frame[1:]),
            what=f"{kind.name} frame",
            max_size=limit,
            max_str_len=max(MAX_ERROR_MESSAGE * 4, _MAX_CODE),
            max_bin_len=limit,
            max_array_len=_MAX_HELLO_FIELDS,
            max_map_len=_MAX_HELLO_FIELDS,
        )
        return _PARSERS[kind](value)

    @staticmethod
    def _decode_data(head: memoryview, chunk: memoryview) -> ChunkData:
        _kind, req_id, chunk_index = _DATA_HEADER.unpack(head)
        return ChunkData(
            _req_id(req_id), _int(chunk_index, "chunk index", 0, MAX_TOTAL_CHUNKS - 1), chunk
        )


# --- sessions ------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    # "replace" drops lone surrogates, which msgpack could not encode.
    return str(exc).encode("utf-8", "replace").decode("utf-8")[:MAX_ERROR_MESSAGE]


def closing_error(exc: BaseException) -> ErrorReply:
    """The ERROR frame (request id 0) to send before closing a stream because of ``exc``.

    A TransferError keeps its code, a protocol violation by the peer is BAD_REQUEST,
    and anything else is INTERNAL without details (they belong in our log, not to
    the peer).
    """
    if isinstance(exc, TransferError):
        return ErrorReply(0, exc.code, _error_text(exc))
    if isinstance(exc, RemoteProtocolError):
        return ErrorReply(0, ErrorCode.BAD_REQUEST, _error_text(exc))
    return ErrorReply(0, ErrorCode.INTERNAL, "internal error")


def _check_hello(message: Hello, expected_role: Role) -> None:
    if message.role != expected_role:
        raise RemoteProtocolError(
            f"the peer says it is a {message.role}, expected a {expected_role}"
        )
    if message.version != VERSION:
        raise UnsupportedVersionError(
            f"the peer speaks transfer protocol version {message.version}, "
            f"this p2pshare speaks version {VERSION}"
        )


@dataclass(frozen=True)
class Response:
    """What ClientSession.receive makes of a server message.

    ``request`` is the request the message answers (DATA frames carry no content ID;
    this says which share and range they belong to).  ``finished`` is True when the
    message ended the request: its id is free and no longer counts as outstanding.
    An ERROR for a request arrives here as ``message``; ``message.exception()`` types it.
    """

    request: ClientRequest
    message: ServerMessage
    finished: bool


_R = TypeVar("_R", GetManifest, GetPage, GetHave, ChunkRequest)


def _checked(request: _R) -> _R:
    """The request, once it passes the checks a peer's decoder applies to it."""
    encode(request)
    return request


@dataclass
class _ClientPending:
    request: ClientRequest
    lengths: tuple[int, ...] = ()
    received: int = 0
    cancelled: bool = False


class ClientSession:
    """The downloader's bookkeeping for one stream.

    Call ``hello()`` first and send its result; requests may follow at once, before
    the server's HELLO arrives.  Each request method returns the message to send and
    records what may come back; ``receive`` checks every server message against those
    records and raises RemoteProtocolError for anything unasked for, so a peer cannot
    push chunks, replies or errors the downloader did not request.
    """

    def __init__(self, *, max_outstanding: int = MAX_OUTSTANDING_REQUESTS) -> None:
        if not 1 <= max_outstanding <= MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError(
                f"max_outstanding must be from 1 to {MAX_OUTSTANDING_REQUESTS}"
            )
        self._max_outstanding = max_outstanding
        self._pending: dict[int, _ClientPending] = {}
        self._next_id = 1
        self._hello_sent = False
        self._server_hello = False
        self._closed = False

    @property
    def ready(self) -> bool:
        """True once the server's HELLO has arrived (the version is agreed)."""
        return self._server_hello

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def can_request(self) -> bool:
        """False while ``max_outstanding`` requests are unfinished; wait for a Response."""
        return len(self._pending) < self._max_outstanding and not self._closed

    def pending(self, req_id: int) -> ClientRequest | None:
        """The unfinished request with this id, if any."""
        entry = self._pending.get(req_id)
        return None if entry is None else entry.request

    def hello(self) -> Hello:
        if self._hello_sent:
            raise LocalProtocolError("HELLO is sent once, first")
        self._hello_sent = True
        return Hello(VERSION, Role.CLIENT)

    def _allocate(self) -> int:
        if not self._hello_sent:
            raise LocalProtocolError("send hello() before any request")
        if not self.can_request:
            raise LocalProtocolError(
                f"{len(self._pending)} requests are outstanding; wait for one to finish"
            )
        while self._next_id in self._pending:
            self._next_id = self._next_id % MAX_REQ_ID + 1
        req_id = self._next_id
        self._next_id = self._next_id % MAX_REQ_ID + 1
        return req_id

    def _register(self, request: _R, lengths: tuple[int, ...] = ()) -> _R:
        self._pending[request.req_id] = _ClientPending(request, lengths)
        return request

    def get_manifest(self, cid: ContentId) -> GetManifest:
        return self._register(_checked(GetManifest(self._allocate(), cid)))

    def get_page(self, cid: ContentId, page_index: int) -> GetPage:
        return self._register(_checked(GetPage(self._allocate(), cid, page_index)))

    def get_have(self, cid: ContentId, first_chunk: int, count: int) -> GetHave:
        """Ask which chunks of a range the server holds (at most MAX_HAVE_CHUNKS)."""
        return self._register(_checked(GetHave(self._allocate(), cid, first_chunk, count)))

    def get_chunks(
        self, cid: ContentId, first_chunk: int, count: int, chunk_length: Callable[[int], int]
    ) -> ChunkRequest:
        """Ask for ``count`` chunks from ``first_chunk``.

        ``chunk_length(global_index)`` gives each chunk's length in bytes from the
        verified manifest (``lambda i: manifest.locate_chunk(i).length``); DATA of any
        other length is refused.
        """
        request = _checked(ChunkRequest(self._allocate(), cid, first_chunk, count))
        lengths = tuple(chunk_length(index) for index in request.chunks)
        if any(type(n) is not int or not 1 <= n <= MAX_CHUNK_SIZE for n in lengths):
            raise LocalProtocolError(f"chunk lengths {lengths} are not all valid")
        return self._register(request, lengths)

    def cancel(self, req_id: int) -> Cancel | None:
        """The CANCEL to send, or None if the request is finished or already cancelled.

        A cancelled request stays outstanding until the server ends it (with DATA it had
        already sent, then ERROR ``cancelled``, or simply its last DATA); chunks arriving
        meanwhile are valid and delivered as usual.
        """
        entry = self._pending.get(req_id)
        if entry is None or entry.cancelled:
            return None
        entry.cancelled = True
        return Cancel(req_id)

    def receive(self, message: Message) -> Response | None:
        """Check one decoded server message; None for the server's HELLO.

        Raises the typed TransferError for a connection-level ERROR (request id 0),
        UnsupportedVersionError for a HELLO of another version, RemoteProtocolError
        for anything the client did not ask for.
        """
        if self._closed:
            raise RemoteProtocolError("the server sent a message after closing the stream")
        if isinstance(message, ErrorReply) and message.req_id == 0:
            self._closed = True
            raise message.exception()
        if isinstance(message, Hello):
            if self._server_hello:
                raise RemoteProtocolError("the server sent HELLO twice")
            _check_hello(message, Role.SERVER)
            self._server_hello = True
            return None
        if not self._server_hello:
            raise RemoteProtocolError("the server must answer with HELLO first")
        if not isinstance(message, ErrorReply | ManifestReply | PageReply | HaveReply | ChunkData):
            raise RemoteProtocolError(f"a server does not send {type(message).__name__}")
        entry = self._pending.get(message.req_id)
        if entry is None:
            raise RemoteProtocolError(f"the server answered request {message.req_id}, not asked")
        if isinstance(message, ChunkData):
            finished = self._check_data(entry, message)
        else:
            if not isinstance(message, ErrorReply):
                _check_reply(entry.request, message)
            finished = True
        if finished:
            del self._pending[message.req_id]
        return Response(entry.request, message, finished)

    @staticmethod
    def _check_data(entry: _ClientPending, message: ChunkData) -> bool:
        request = entry.request
        if not isinstance(request, ChunkRequest):
            raise RemoteProtocolError(f"DATA for request {request.req_id}, which asked no chunks")
        expected = request.first_chunk + entry.received
        if message.chunk_index != expected:
            raise RemoteProtocolError(
                f"request {request.req_id} expects chunk {expected} next, not {message.chunk_index}"
            )
        length = entry.lengths[entry.received]
        if len(message.payload) != length:
            raise RemoteProtocolError(
                f"chunk {expected} has {len(message.payload)} bytes, the manifest says {length}"
            )
        entry.received += 1
        return entry.received == request.count


def _check_reply(request: ClientRequest, reply: Reply) -> None:
    """Raise RemoteProtocolError unless ``reply`` is the kind of answer ``request`` asked for."""
    if isinstance(request, GetManifest) and isinstance(reply, ManifestReply):
        matches = reply.cid == request.cid
    elif isinstance(request, GetPage) and isinstance(reply, PageReply):
        matches = (reply.cid, reply.page_index) == (request.cid, request.page_index)
    elif isinstance(request, GetHave) and isinstance(reply, HaveReply):
        matches = (reply.cid, reply.first_chunk, len(reply.have)) == (
            request.cid,
            request.first_chunk,
            request.count,
        )
    else:
        matches = False
    if not matches:
        raise RemoteProtocolError(
            f"{type(reply).__name__} does not answer request {request.req_id} ({request!r})"
        )


@dataclass
class _ServerPending:
    request: ClientRequest
    sent: int = 0
    cancelled: bool = False


class ServerSession:
    """The uploader's bookkeeping for one stream.

    ``receive`` answers HELLO and BUSY itself and hands every accepted request to the
    shell, which ends it with ``reply`` (metadata), ``data`` (one call per chunk, in
    order) or ``fail``.  Those return the frame to send, which is the ERROR
    ``cancelled`` instead once the client has cancelled the request: the request's
    last frame always comes from the code serving it, so a request id is never freed
    while a chunk of the old request could still be written under it.  Frames of one
    request must be written in the order they were returned.
    """

    def __init__(self, *, max_outstanding: int = MAX_OUTSTANDING_REQUESTS) -> None:
        if not 1 <= max_outstanding <= MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError(
                f"max_outstanding must be from 1 to {MAX_OUTSTANDING_REQUESTS}"
            )
        self._max_outstanding = max_outstanding
        self._pending: dict[int, _ServerPending] = {}
        self._hello = False
        self._closed = False

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def receive(self, message: Message) -> Hello | ErrorReply | ClientRequest | None:
        """Act on one decoded client message.

        Returns the HELLO to send back, an ERROR ``busy`` to send (the request is not
        accepted), a request to serve, or None (CANCEL needs no answer of its own).
        Raises UnsupportedVersionError for a HELLO of another version, the typed
        TransferError for a connection-level ERROR from the client, and
        RemoteProtocolError for anything out of order; send ``closing_error(exc)``
        and close the stream.
        """
        if self._closed:
            raise RemoteProtocolError("the client sent a message after closing the stream")
        if isinstance(message, Hello):
            if self._hello:
                raise RemoteProtocolError("the client sent HELLO twice")
            try:
                _check_hello(message, Role.CLIENT)
            except RemoteError:
                self._closed = True
                raise
            self._hello = True
            return Hello(VERSION, Role.SERVER)
        if not self._hello:
            raise RemoteProtocolError("the client must send HELLO first")
        if isinstance(message, ErrorReply):
            self._closed = True
            if message.req_id == 0:
                raise message.exception()
            raise RemoteProtocolError("a client sends ERROR only to close the stream")
        if isinstance(message, Cancel):
            entry = self._pending.get(message.req_id)
            if entry is not None:
                entry.cancelled = True
            return None
        if not isinstance(message, GetManifest | GetPage | GetHave | ChunkRequest):
            raise RemoteProtocolError(f"a client does not send {type(message).__name__}")
        if message.req_id in self._pending:
            raise RemoteProtocolError(f"request id {message.req_id} is already in use")
        if len(self._pending) >= self._max_outstanding:
            return ErrorReply(
                message.req_id,
                ErrorCode.BUSY,
                f"at most {self._max_outstanding} requests may be outstanding",
            )
        self._pending[message.req_id] = _ServerPending(message)
        return message

    def cancelled(self, req_id: int) -> bool:
        """True once the client cancelled the request: skip reading the next chunk and
        call ``fail`` (which then returns the ERROR ``cancelled``)."""
        return self._entry(req_id).cancelled

    def data(self, req_id: int, chunk_index: int, payload: BytesLike) -> ChunkData | ErrorReply:
        """The frame for the next chunk of a REQUEST (ERROR ``cancelled`` if cancelled)."""
        entry = self._entry(req_id)
        request = entry.request
        if not isinstance(request, ChunkRequest):
            raise LocalProtocolError(f"request {req_id} did not ask for chunks")
        if entry.cancelled:
            return self._end_cancelled(req_id)
        expected = request.first_chunk + entry.sent
        if chunk_index != expected:
            raise LocalProtocolError(f"request {req_id} must send chunk {expected} next")
        if not 1 <= len(payload) <= MAX_CHUNK_SIZE:
            raise LocalProtocolError(f"a chunk of {len(payload)} bytes cannot be sent")
        entry.sent += 1
        if entry.sent == request.count:
            del self._pending[req_id]
        return ChunkData(req_id, chunk_index, payload)

    def reply(self, message: Reply) -> Reply | ErrorReply:
        """The frame answering a GET_MANIFEST, GET_PAGE or GET_HAVE (ERROR if cancelled)."""
        entry = self._entry(message.req_id)
        if entry.cancelled:
            return self._end_cancelled(message.req_id)
        try:
            _check_reply(entry.request, message)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from exc
        del self._pending[message.req_id]
        return message

    def fail(self, req_id: int, error: TransferError) -> ErrorReply:
        """End a request with ``error`` (e.g. UnknownContentError); ERROR ``cancelled``
        instead if the client cancelled it."""
        entry = self._entry(req_id)
        if entry.cancelled:
            return self._end_cancelled(req_id)
        del self._pending[req_id]
        return ErrorReply(req_id, error.code, _error_text(error))

    def _entry(self, req_id: int) -> _ServerPending:
        entry = self._pending.get(req_id)
        if entry is None:
            raise LocalProtocolError(f"request {req_id} is not being served")
        return entry

    def _end_cancelled(self, req_id: int) -> ErrorReply:
        del self._pending[req_id]
        return ErrorReply(req_id, ErrorCode.CANCELLED, "cancelled by the client")
