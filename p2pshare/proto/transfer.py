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

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from p2pshare.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from p2pshare.proto.chunks import MAX_CHUNK_SIZE
from p2pshare.proto.transfer_codec import (
    TransferDecoder,
    encode,
    encode_data_header,
)
from p2pshare.proto.transfer_messages import (
    DATA_HEADER_SIZE,
    MAX_CHUNKS_PER_REQUEST,
    MAX_CONTROL_FRAME,
    MAX_ERROR_MESSAGE,
    MAX_HAVE_CHUNKS,
    MAX_OUTSTANDING_REQUESTS,
    MAX_REPLY_FRAME,
    MAX_REQ_ID,
    PROTOCOL_ID,
    VERSION,
    BadRequestError,
    BusyError,
    Cancel,
    ChunkData,
    ChunkRequest,
    ClientMessage,
    ClientRequest,
    ErrorCode,
    ErrorReply,
    GetHave,
    GetManifest,
    GetPage,
    HaveReply,
    Hello,
    ManifestReply,
    Message,
    MessageType,
    NotAvailableError,
    PageReply,
    PeerInternalError,
    RateLimitedError,
    Reply,
    RequestCancelledError,
    Role,
    ServerMessage,
    TransferError,
    UnknownContentError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.proto.chunks import BytesLike
    from p2pshare.proto.cid import ContentId

# The protocol's whole vocabulary, importable from here as before the split into
# transfer_messages (vocabulary), transfer_codec (frames) and this module (sessions).
__all__ = [
    "DATA_HEADER_SIZE",
    "MAX_CHUNKS_PER_REQUEST",
    "MAX_CONTROL_FRAME",
    "MAX_ERROR_MESSAGE",
    "MAX_HAVE_CHUNKS",
    "MAX_OUTSTANDING_REQUESTS",
    "MAX_REPLY_FRAME",
    "MAX_REQ_ID",
    "PROTOCOL_ID",
    "VERSION",
    "BadRequestError",
    "BusyError",
    "Cancel",
    "ChunkData",
    "ChunkRequest",
    "ClientMessage",
    "ClientRequest",
    "ClientSession",
    "ErrorCode",
    "ErrorReply",
    "GetHave",
    "GetManifest",
    "GetPage",
    "HaveReply",
    "Hello",
    "ManifestReply",
    "Message",
    "MessageType",
    "NotAvailableError",
    "PageReply",
    "PeerInternalError",
    "RateLimitedError",
    "Reply",
    "RequestCancelledError",
    "Response",
    "Role",
    "ServerMessage",
    "ServerSession",
    "TransferDecoder",
    "TransferError",
    "UnknownContentError",
    "UnsupportedVersionError",
    "closing_error",
    "encode",
    "encode_data_header",
]


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
