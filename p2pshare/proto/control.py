"""Messages of the local control API (CLI <-> daemon over a unix socket).

Every message is one frame (see :mod:`p2pshare.proto.framing`) holding a msgpack
map:

* request  ``{"v": 1, "id": int, "method": str, "params": map}``
* reply    ``{"id": int, "result": any}``
* error    ``{"id": int, "error": {"code": str, "message": str}}``
* event    ``{"id": int, "event": str, "data": map}`` -- zero or more before the
  reply of a long call (progress).

Request ids are chosen by the client and are >= 1; id 0 marks an error reply that
cannot be tied to a request (the request itself was unreadable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.canonical import nesting_exceeds
from p2pshare.proto.framing import encode_frame
from p2pshare.proto.paths import printable

VERSION = 1
MAX_FRAME = 4 * 1024 * 1024
MAX_ID = 2**53
_MAX_NAME = 64
# Params and results are small documents; deeper nesting only serves to reach
# Python's recursion limit in whatever walks them.
_MAX_DEPTH = 32


class ErrorCode:
    """Codes of error replies; the message is the sentence shown to the user."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    FAILED = "failed"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    id: int
    result: Any


@dataclass(frozen=True)
class ErrorReply:
    id: int
    code: str
    message: str


@dataclass(frozen=True)
class Event:
    id: int
    event: str
    data: dict[str, Any] = field(default_factory=dict)


ServerMessage = Reply | ErrorReply | Event


class BadRequestError(RemoteProtocolError):
    """A request frame that is not a valid request; ``request_id`` is 0 if unknown."""

    def __init__(
        self, message: str, request_id: int = 0, code: str = ErrorCode.BAD_REQUEST
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code


def _printable_strings(obj: object) -> object:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_strings(k): _printable_strings(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_printable_strings(item) for item in obj]
    return obj


def _pack(obj: object, *, escape: bool = False) -> bytes:
    try:
        try:
            payload: bytes = msgpack.packb(obj, use_bin_type=True)
        except UnicodeEncodeError:
            if not escape:
                raise
            # A file name that is not UTF-8 reached a reply or a message: show it
            # escaped rather than fail the whole reply.
            payload = msgpack.packb(_printable_strings(obj), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"value cannot be encoded as msgpack: {exc}") from exc
    return encode_frame(payload, MAX_FRAME)


def _unpack_map(payload: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except (msgpack.UnpackException, ValueError) as exc:
        raise RemoteProtocolError(f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a control message must be a msgpack map")
    if nesting_exceeds(obj, _MAX_DEPTH):
        raise RemoteProtocolError(f"a control message nests more than {_MAX_DEPTH} levels deep")
    return obj


def _valid_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _valid_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME


def _valid_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def encode_request(request: Request) -> bytes:
    if not _valid_id(request.id) or request.id == 0 or not _valid_name(request.method):
        raise LocalProtocolError(f"invalid request {request!r}")
    return _pack(
        {"v": VERSION, "id": request.id, "method": request.method, "params": request.params}
    )


def decode_request(payload: bytes) -> Request:
    """Decode one request frame payload; raise BadRequestError if it is not one."""
    try:
        obj = _unpack_map(payload)
    except RemoteProtocolError as exc:
        raise BadRequestError(str(exc)) from exc
    request_id = obj.get("id")
    if not _valid_id(request_id) or request_id == 0:
        raise BadRequestError("request id must be an integer between 1 and 2**53")
    assert isinstance(request_id, int)
    if set(obj) != {"v", "id", "method", "params"}:
        raise BadRequestError("a request has exactly the keys v, id, method and params", request_id)
    if obj["v"] != VERSION or type(obj["v"]) is not int:
        raise BadRequestError(
            f"control protocol version {obj['v']!r} is not supported "
            f"(this daemon speaks {VERSION})",
            request_id,
            ErrorCode.UNSUPPORTED_VERSION,
        )
    method, params = obj["method"], obj["params"]
    if not _valid_name(method):
        raise BadRequestError(
            "method must be a non-empty string of at most 64 characters", request_id
        )
    if not _valid_map(params):
        raise BadRequestError("params must be a map with string keys", request_id)
    return Request(request_id, method, params)


def encode_server_message(message: ServerMessage) -> bytes:
    if not _valid_id(message.id):
        raise LocalProtocolError(f"invalid message id in {message!r}")
    match message:
        case Reply(id=mid, result=result):
            return _pack({"id": mid, "result": result}, escape=True)
        case ErrorReply(id=mid, code=code, message=text):
            return _pack({"id": mid, "error": {"code": code, "message": text}}, escape=True)
        case Event(id=mid, event=name, data=data):
            if not _valid_name(name):
                raise LocalProtocolError(f"invalid event name {name!r}")
            return _pack({"id": mid, "event": name, "data": data}, escape=True)


def decode_server_message(payload: bytes) -> ServerMessage:
    """Decode one frame from the daemon; raise RemoteProtocolError if it is not a message."""
    obj = _unpack_map(payload)
    mid = obj.get("id")
    if not _valid_id(mid):
        raise RemoteProtocolError("message id must be an integer between 0 and 2**53")
    assert isinstance(mid, int)
    keys = set(obj)
    if keys == {"id", "result"}:
        return Reply(mid, obj["result"])
    if keys == {"id", "error"}:
        error = obj["error"]
        if (
            not isinstance(error, dict)
            or set(error) != {"code", "message"}
            or not _valid_name(error["code"])
            or not isinstance(error["message"], str)
        ):
            raise RemoteProtocolError("error must be a map of code and message strings")
        return ErrorReply(mid, error["code"], error["message"])
    if keys == {"id", "event", "data"}:
        if not _valid_name(obj["event"]) or not _valid_map(obj["data"]):
            raise RemoteProtocolError("event needs a name and a map of data")
        return Event(mid, obj["event"], obj["data"])
    raise RemoteProtocolError("a server message is a reply, an error or an event")
