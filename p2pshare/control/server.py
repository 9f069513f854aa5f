"""The daemon side of the control API: a trio server on a unix socket.

Thin shell over :mod:`p2pshare.proto.control`: read bytes, feed the frame decoder,
dispatch each request to its handler, write the reply.  A client that sends
garbage gets an error reply (or, once framing is lost, a closed connection); it
never affects other clients.
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.errors import LocalProtocolError, RemoteProtocolError, UserError, leaf_errors
from p2pshare.modes import MAX_UMASK
from p2pshare.proto.control import (
    MAX_FRAME,
    BadRequestError,
    ErrorCode,
    ErrorReply,
    Event,
    Reply,
    decode_request,
    encode_server_message,
)
from p2pshare.proto.framing import FrameDecoder, FrameTooLargeError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600
MAX_CLIENTS = 64


class InvalidParamsError(UserError):
    """A handler rejects the params of a request; the message says which and why."""


def umask_param(params: Mapping[str, Any], default: int) -> int:
    """The ``umask`` a client sent (its user's, which sets the modes of what it gets),
    else ``default``, the daemon's: clients from before the parameter send none."""
    value = params.get("umask")
    if value is None:
        return default
    if type(value) is not int or not 0 <= value <= MAX_UMASK:
        raise InvalidParamsError(
            f"parameter 'umask' must be an integer from 0 to 0o777, not {value!r}"
        )
    return value


class ClientGoneError(trio.BrokenResourceError):
    """The client of a request went away (killed, Ctrl-C) while it was being served:
    what :data:`Emit` raises then.  Not a failure of the daemon: it is logged without
    a traceback, and a handler that holds resources releases them as it unwinds."""


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Sends a progress event for the current request."""
Handler = Callable[[dict[str, Any], Emit], Awaitable[Any]]
"""Serves one control method: (params, emit) -> result."""


class ControlServer:
    """Serve ``handlers`` (method name -> async handler) on a unix socket."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        log_hint: str,
    ) -> None:
        self._handlers = handlers
        self._log_hint = log_hint
        self._streams: set[trio.SocketStream] = set()
        self._slots = trio.Semaphore(MAX_CLIENTS)
        self._holding = False

    @staticmethod
    async def bind(path: Path) -> trio.socket.SocketType:
        """Bind the control socket with mode 0600 from the first instant.

        The umask is process-wide, but this runs once at start-up before any
        other task creates files.
        """
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old_umask)
        await trio.Path(path).chmod(SOCKET_MODE)
        sock.listen(MAX_CLIENTS)
        return sock

    async def serve(
        self,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = trio.SocketListener(sock)
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                self._streams.add(stream)
                nursery.start_soon(self._serve_connection, stream)

    def hold_connections(self) -> None:
        """Keep client connections open through shutdown until close_connections()."""
        self._holding = True

    def close_connections(self) -> None:
        """Close every client connection at once; called as the daemon exits, so a
        client waiting for EOF (``p2pshare stop``) learns the daemon is gone."""
        for stream in self._streams:
            stream.socket.close()
        self._streams.clear()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(MAX_FRAME)
        try:
            if self._slots.value == 0:
                await self._send(
                    stream, ErrorReply(0, ErrorCode.FAILED, "too many control clients; try again")
                )
                return
            async with self._slots:
                while True:
                    try:
                        frame = decoder.next_frame()
                    except FrameTooLargeError as exc:
                        await self._send(stream, ErrorReply(0, ErrorCode.BAD_REQUEST, str(exc)))
                        return
                    if frame is None:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        decoder.feed(data)
                        continue
                    await self._handle_frame(stream, frame)
        except trio.BrokenResourceError:
            log.debug("control client went away")
        finally:
            if not self._holding and stream in self._streams:
                self._streams.discard(stream)
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _handle_frame(self, stream: trio.SocketStream, frame: bytes) -> None:
        try:
            request = decode_request(frame)
        except BadRequestError as exc:
            await self._send(stream, ErrorReply(exc.request_id, exc.code, str(exc)))
            return
        handler = self._handlers.get(request.method)
        if handler is None:
            await self._send(
                stream,
                ErrorReply(
                    request.id, ErrorCode.UNKNOWN_METHOD, f"unknown method {request.method!r}"
                ),
            )
            return

        async def emit(name: str, data: dict[str, Any]) -> None:
            try:
                await self._send(stream, Event(request.id, name, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGoneError(f"the client of {request.method} went away") from exc

        try:
            result = await handler(request.params, emit)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            reply: Reply | ErrorReply = self._error_reply(request.id, request.method, exc)
        else:
            reply = Reply(request.id, result)
        try:
            await self._send(stream, reply)
        except LocalProtocolError:
            log.exception("reply to %s cannot be encoded", request.method)
            await self._send(
                stream,
                ErrorReply(
                    request.id,
                    ErrorCode.INTERNAL,
                    f"internal error in the daemon; see {self._log_hint}",
                ),
            )

    def _error_reply(self, request_id: int, method: str, exc: Exception) -> ErrorReply:
        """The reply for a failed call: the first error in it that speaks to the user."""
        leaves = leaf_errors(exc)
        if any(isinstance(leaf, ClientGoneError) for leaf in leaves):
            log.info("%s stopped: its client went away", method)
            return ErrorReply(request_id, ErrorCode.FAILED, "the client went away")
        for leaf in leaves:
            if isinstance(leaf, InvalidParamsError):
                return ErrorReply(request_id, ErrorCode.INVALID_PARAMS, str(leaf))
            if isinstance(leaf, UserError):
                return ErrorReply(request_id, ErrorCode.FAILED, str(leaf))
        for leaf in leaves:
            if isinstance(leaf, RemoteProtocolError):
                return ErrorReply(
                    request_id, ErrorCode.FAILED, f"a peer broke the protocol: {leaf}"
                )
        log.error("control method %s failed", method, exc_info=exc)
        return ErrorReply(
            request_id, ErrorCode.INTERNAL, f"internal error in the daemon; see {self._log_hint}"
        )

    @staticmethod
    async def _send(stream: trio.SocketStream, message: Reply | ErrorReply | Event) -> None:
        await stream.send_all(encode_server_message(message))
