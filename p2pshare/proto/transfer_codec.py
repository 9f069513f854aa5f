"""Transfer protocol frames: ``encode`` a message, ``TransferDecoder`` for bytes received.

Sans-IO (p2pshare.proto.transfer has the overview, and re-exports ``encode`` and
``TransferDecoder``); the frame layout is described there and in
docs/transfer-protocol.md.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Final

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.canonical import pack, unpack
from p2pshare.proto.chunks import HASH_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, BytesLike
from p2pshare.proto.cid import CID_BYTES, ContentId
from p2pshare.proto.framing import HEADER_SIZE, FrameTooLargeError, encode_frame
from p2pshare.proto.manifest import MAX_MANIFEST_SIZE, MAX_PAGES, MAX_TOTAL_CHUNKS
from p2pshare.proto.pages import PAGE_SIZE
from p2pshare.proto.transfer_messages import (
    DATA_HEADER_SIZE,
    MAX_CHUNKS_PER_REQUEST,
    MAX_CONTROL_FRAME,
    MAX_ERROR_MESSAGE,
    MAX_HAVE_CHUNKS,
    MAX_REPLY_FRAME,
    MAX_REQ_ID,
    Cancel,
    ChunkData,
    ChunkRequest,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    Message,
    MessageType,
    PageReply,
    Role,
)

if TYPE_CHECKING:
    from collections.abc import Callable

_MAX_CODE = 32
_MAX_ROLE = 16
# HELLO is [version, role, ...]: later versions may append fields, which v1 ignores.
_MAX_HELLO_FIELDS = 16
_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_DATA_HEADER = struct.Struct(">BII")
# A DATA frame up to its chunk: the length prefix and the DATA header.
_DATA_FRAME_HEAD: Final = HEADER_SIZE + DATA_HEADER_SIZE
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
