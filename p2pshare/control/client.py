"""Blocking control client used by the CLI.

Plain sockets, no trio: a CLI query must start fast, and one request per
connection needs no event loop.
"""

from __future__ import annotations

import errno
import itertools
import socket
from typing import TYPE_CHECKING, Any

from p2pshare.errors import (
    ConfigError,
    ControlCallError,
    DaemonNotRunningError,
    RemoteProtocolError,
    UserError,
)
from p2pshare.proto.control import (
    MAX_FRAME,
    ErrorReply,
    Event,
    Reply,
    Request,
    decode_server_message,
    encode_request,
)
from p2pshare.proto.framing import FrameDecoder
from p2pshare.proto.paths import printable

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pshare.home import Home

_NOT_RUNNING_ERRNOS = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK}


def not_running(home: Home) -> DaemonNotRunningError:
    return DaemonNotRunningError(
        f"the p2pshare daemon is not running for {home.root}; "
        f"start it with: {home.command('daemon')}"
    )


class ControlClient:
    """One connection to a daemon's control socket."""

    def __init__(self, home: Home, timeout: float | None = 30.0) -> None:
        self._home = home
        self._ids = itertools.count(1)
        self._decoder = FrameDecoder(MAX_FRAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(home.socket_path))
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.ENOENT and not home.root.is_dir():
                raise ConfigError(
                    f"there is no p2pshare home at {home.root}; create one with: "
                    f"{home.command('init')}, or check --home and $P2PSHARE_HOME"
                ) from None
            if exc.errno in _NOT_RUNNING_ERRNOS:
                raise not_running(home) from None
            raise DaemonNotRunningError(
                f"cannot reach the daemon's control socket {home.socket_path}: {exc.strerror}"
            ) from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _receive(self) -> bytes:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ControlCallError(
                    "timeout", "the daemon did not answer in time; see its log"
                ) from None
            if not data:
                raise ControlCallError(
                    "closed", "the daemon closed the connection before answering"
                )
            self._decoder.feed(data)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Any:
        """Send one request and return its result; events go to ``on_event``."""
        _refuse_undecodable(params)
        request = Request(next(self._ids), method, params or {})
        self._sock.sendall(encode_request(request))
        while True:
            message = decode_server_message(self._receive())
            if isinstance(message, ErrorReply) and message.id == 0:
                raise ControlCallError(message.code, message.message)
            if message.id != request.id:
                raise RemoteProtocolError(
                    f"daemon answered request {message.id} while {request.id} was pending"
                )
            match message:
                case Event():
                    if on_event is not None:
                        on_event(message)
                case Reply(result=result):
                    return result
                case ErrorReply(code=code, message=text):
                    raise ControlCallError(code, text)

    def wait_closed(self) -> None:
        """Block until the daemon closes this connection (it does so as it exits)."""
        while True:
            try:
                if not self._sock.recv(65536):
                    return
            except TimeoutError:
                raise ControlCallError(
                    "timeout", "the daemon did not exit in time; see its log"
                ) from None
            except ConnectionResetError:
                return


def call(home: Home, method: str, params: dict[str, Any] | None = None) -> Any:
    """Connect, make one call, disconnect."""
    with ControlClient(home) as client:
        return client.call(method, params)


def _refuse_undecodable(value: object) -> None:
    """A path given on the command line that is not UTF-8 cannot be sent; say which.

    Escaping it would name another file, so the user is asked to rename it.
    """
    if isinstance(value, str) and printable(value) != value:
        raise UserError(
            f"{printable(value)} is not valid UTF-8, which p2pshare cannot pass to its daemon; "
            "rename it first"
        )
    if isinstance(value, dict):
        for item in value.values():
            _refuse_undecodable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_undecodable(item)
