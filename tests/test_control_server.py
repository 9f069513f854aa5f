"""The control server in-process, over a real unix socket, with fake handlers."""

from __future__ import annotations

import logging
import stat
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
import trio
import trio.testing

from p2pshare.control.server import (
    ClientGoneError,
    ControlServer,
    Emit,
    Handler,
    InvalidParamsError,
)
from p2pshare.errors import UserError
from p2pshare.proto.control import (
    MAX_FRAME,
    ErrorCode,
    ErrorReply,
    Event,
    Reply,
    Request,
    decode_server_message,
    encode_request,
)
from p2pshare.proto.framing import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


async def echo(params: dict[str, Any], emit: Emit) -> Any:
    for step in range(params.get("events", 0)):
        await emit("progress", {"step": step})
    return params


async def fail_user(_params: dict[str, Any], _emit: Emit) -> Any:
    raise UserError("the share is gone")


async def fail_params(_params: dict[str, Any], _emit: Emit) -> Any:
    raise InvalidParamsError("path must be a string")


async def crash(_params: dict[str, Any], _emit: Emit) -> Any:
    raise RuntimeError("bug")


async def fail_in_nursery(_params: dict[str, Any], _emit: Emit) -> Any:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_user, {}, _emit)


async def unencodable(_params: dict[str, Any], _emit: Emit) -> Any:
    return object()


# How Python names a file whose name holds the byte 0xff (PEP 383): a lone surrogate.
NOT_UTF8 = "src/weird/bad\udcff"


async def odd_name_reply(_params: dict[str, Any], emit: Emit) -> Any:
    await emit("progress", {"file": NOT_UTF8})
    return {"skipped": [{"path": NOT_UTF8, "reason": "x"}], NOT_UTF8: ["\ud800"]}


async def odd_name_error(_params: dict[str, Any], _emit: Emit) -> Any:
    raise UserError(f"cannot share {NOT_UTF8}: its name is not valid UTF-8")


# What emit_until_gone saw: set when it ends, and the error that ended it.
GONE: dict[str, Any] = {}


async def emit_until_gone(_params: dict[str, Any], emit: Emit) -> Any:
    """Emit from a worker thread, as ``share`` does while hashing, until emit fails."""
    token = trio.lowlevel.current_trio_token()

    def work() -> None:
        for step in range(10_000):
            trio.from_thread.run(emit, "progress", {"step": step}, trio_token=token)

    GONE["ended"] = trio.Event()
    try:
        await trio.to_thread.run_sync(work)
    except BaseException as exc:
        GONE["error"] = exc
        raise
    finally:
        GONE["ended"].set()


HANDLERS: dict[str, Handler] = {
    "emit_until_gone": emit_until_gone,
    "echo": echo,
    "fail_user": fail_user,
    "fail_params": fail_params,
    "crash": crash,
    "unencodable": unencodable,
    "fail_in_nursery": fail_in_nursery,
    "odd_name_reply": odd_name_reply,
    "odd_name_error": odd_name_error,
}


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(MAX_FRAME)

    async def receive(self) -> Reply | ErrorReply | Event | None:
        while (frame := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.decoder.feed(data)
        return decode_server_message(frame)

    async def call(self, request: Request) -> list[Reply | ErrorReply | Event]:
        await self.stream.send_all(encode_request(request))
        messages = []
        while True:
            message = await self.receive()
            assert message is not None
            messages.append(message)
            if not isinstance(message, Event):
                return messages


class Server:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.clients: list[Client] = []

    async def connect(self) -> Client:
        client = Client(await trio.open_unix_socket(str(self.path)))
        self.clients.append(client)
        return client


@pytest.fixture
async def server(short_tmp: Path) -> AsyncIterator[Server]:
    fake = Server(short_tmp / "control.sock")
    control = ControlServer(HANDLERS, log_hint="the log")
    async with trio.open_nursery() as nursery:
        sock = await ControlServer.bind(fake.path)
        await nursery.start(control.serve, sock)
        yield fake
        for client in fake.clients:
            await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_socket_is_private(server: Server) -> None:
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600


async def test_reply_and_events(server: Server) -> None:
    client = await server.connect()
    messages = await client.call(Request(1, "echo", {"events": 2, "x": "y"}))
    assert messages == [
        Event(1, "progress", {"step": 0}),
        Event(1, "progress", {"step": 1}),
        Reply(1, {"events": 2, "x": "y"}),
    ]


@pytest.mark.parametrize(
    ("method", "code", "text"),
    [
        ("nope", ErrorCode.UNKNOWN_METHOD, "unknown method 'nope'"),
        ("fail_user", ErrorCode.FAILED, "the share is gone"),
        ("fail_in_nursery", ErrorCode.FAILED, "the share is gone"),
        ("fail_params", ErrorCode.INVALID_PARAMS, "path must be a string"),
        ("crash", ErrorCode.INTERNAL, "internal error in the daemon; see the log"),
        ("unencodable", ErrorCode.INTERNAL, "internal error in the daemon; see the log"),
    ],
)
async def test_errors_become_error_replies(
    server: Server, method: str, code: str, text: str
) -> None:
    client = await server.connect()
    assert await client.call(Request(5, method)) == [ErrorReply(5, code, text)]
    # The connection is still usable afterwards.
    assert await client.call(Request(6, "echo", {})) == [Reply(6, {})]


async def test_garbage_gets_an_error_and_others_are_still_served(server: Server) -> None:
    bystander = await server.connect()
    vandal = await server.connect()
    garbage = b"\xc1\xff\x00garbage"
    await vandal.stream.send_all(len(garbage).to_bytes(4, "big") + garbage)
    reply = await vandal.receive()
    assert isinstance(reply, ErrorReply)
    assert reply.id == 0
    assert reply.code == ErrorCode.BAD_REQUEST
    # A well-formed frame holding a non-request keeps the connection alive.
    body = msgpack.packb({"hello": 1})
    await vandal.stream.send_all(len(body).to_bytes(4, "big") + body)
    assert isinstance(await vandal.receive(), ErrorReply)
    assert await bystander.call(Request(1, "echo", {"a": 1})) == [Reply(1, {"a": 1})]


async def test_oversize_frame_closes_that_connection_only(server: Server) -> None:
    bystander = await server.connect()
    vandal = await server.connect()
    await vandal.stream.send_all((MAX_FRAME + 1).to_bytes(4, "big"))
    reply = await vandal.receive()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.BAD_REQUEST
    assert await vandal.receive() is None
    assert await bystander.call(Request(1, "echo", {})) == [Reply(1, {})]


async def test_client_vanishing_mid_request_does_not_stop_the_server(server: Server) -> None:
    vandal = await server.connect()
    await vandal.stream.send_all(encode_request(Request(1, "echo", {"events": 50}))[:-1])
    await vandal.stream.aclose()
    client = await server.connect()
    assert await client.call(Request(2, "echo", {})) == [Reply(2, {})]


async def test_a_client_killed_mid_request_is_logged_in_one_line_without_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="p2pshare.control.server")
    client = await server.connect()
    await client.stream.send_all(encode_request(Request(1, "emit_until_gone", {})))
    assert isinstance(await client.receive(), Event)
    await client.stream.aclose()
    with trio.fail_after(10):
        await GONE["ended"].wait()
    assert isinstance(GONE["error"], ClientGoneError)
    # Once the handler's reply found no client either, the connection is done with.
    with trio.fail_after(10):
        while "control client went away" not in caplog.messages:
            await trio.testing.wait_all_tasks_blocked()
    assert [r.message for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert "emit_until_gone stopped: its client went away" in caplog.messages


async def test_a_name_that_is_not_utf8_never_crashes_a_reply(server: Server) -> None:
    client = await server.connect()
    shown = "src/weird/bad\\xff"
    assert await client.call(Request(1, "odd_name_reply", {})) == [
        Event(1, "progress", {"file": shown}),
        Reply(1, {"skipped": [{"path": shown, "reason": "x"}], shown: ["\\ud800"]}),
    ]
    assert await client.call(Request(2, "odd_name_error", {})) == [
        ErrorReply(2, ErrorCode.FAILED, f"cannot share {shown}: its name is not valid UTF-8")
    ]
