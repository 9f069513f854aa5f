"""Transfer protocol vocabulary: limits, message types, error codes and messages.

Sans-IO, like the rest of the protocol (p2pshare.proto.transfer has the overview,
and re-exports every name here); p2pshare.proto.transfer_codec turns these
messages into frames and back.  Normative description: docs/transfer-protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias

from p2pshare.errors import RemoteError
from p2pshare.proto.manifest import MAX_MANIFEST_SIZE

if TYPE_CHECKING:
    from p2pshare.proto.bitfield import Bitfield
    from p2pshare.proto.chunks import BytesLike
    from p2pshare.proto.cid import ContentId

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
