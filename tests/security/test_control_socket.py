"""Garbage on the control socket: each hostile connection gets an error reply or is
closed, and the daemon keeps serving everyone else; several CLIs work at once."""

from __future__ import annotations

import json
import random
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from p2pshare.launcher import cli_command, run_cli
from p2pshare.proto.control import MAX_FRAME, ErrorCode, ErrorReply, decode_server_message
from p2pshare.proto.framing import FrameDecoder

if TYPE_CHECKING:
    from p2pshare.home import Home
    from p2pshare.launcher import DaemonProcess

pytestmark = pytest.mark.integration


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


HOSTILE = {
    "random bytes": random.Random(8).randbytes(64 * 1024),
    "oversize header": (MAX_FRAME + 1).to_bytes(4, "big"),
    "4 GiB header": b"\xff\xff\xff\xff",
    "half a header": b"\x00\x00",
    "half a frame": b"\x00\x00\x01\x00" + b"x" * 10,
    "not msgpack": _frame(b"\xc1\xc1\xc1"),
    "deep nesting": _frame(b"\x91" * 100_000 + b"\xc0"),
    "array bomb": _frame(b"\xdd\xff\xff\xff\xff"),
    "not a map": _frame(b"\x93\x01\x02\x03"),
    "huge id": _frame(b"\x84\xa1v\x01\xa2id\xcf" + b"\xff" * 8 + b"\xa6method\xa2id\xa6params\x80"),
    "empty frames": _frame(b"") * 1000,
    # A version 1000 levels deep: the error message quoting it once ended the daemon.
    "deep version": _frame(
        b"\x84\xa1v" + b"\x91" * 1000 + b"\xc0\xa2id\x01\xa6method\xa2id\xa6params\x80"
    ),
}

# Kinds whose error replies are certain: each whole frame answered, or the oversize
# header refused before the connection is closed.
REPLIES = {
    "oversize header": 1,
    "4 GiB header": 1,
    "not msgpack": 1,
    "deep nesting": 1,
    "array bomb": 1,
    "not a map": 1,
    "huge id": 1,
    "empty frames": 1000,
    "deep version": 1,
}


def _send_and_read(home: Home, data: bytes) -> list[object]:
    """Send ``data``, end our side and read until the daemon closes: its messages."""
    with socket.socket(socket.AF_UNIX) as vandal:
        vandal.settimeout(20)
        vandal.connect(str(home.socket_path))
        try:
            vandal.sendall(data)
            vandal.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # The daemon already closed on an oversize header: that is fine.
        decoder = FrameDecoder(MAX_FRAME)
        messages: list[object] = []
        while chunk := vandal.recv(65536):
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                messages.append(decode_server_message(frame))
        return messages


def _status(home: Home) -> dict[str, object]:
    result = run_cli(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def test_garbage_gets_an_error_or_a_close(daemon: DaemonProcess) -> None:
    # One daemon for every kind of garbage, in turn: each must leave it serving.
    for name, data in HOSTILE.items():
        messages = _send_and_read(daemon.home, data)
        assert all(isinstance(m, ErrorReply) for m in messages), name
        assert {m.code for m in messages if isinstance(m, ErrorReply)} <= {ErrorCode.BAD_REQUEST}, (
            name
        )
        if name in REPLIES:
            assert len(messages) == REPLIES[name], name
        assert _status(daemon.home)["peer_id"] == daemon.info["peer_id"], name


def test_slow_and_silent_clients_do_not_block_others(daemon: DaemonProcess) -> None:
    # Connections stuck mid-frame, or saying nothing, while the CLI is used.
    stuck = []
    try:
        for data in (b"\x00\x00", b"\x00\x00\x10\x00abc", b""):
            sock = socket.socket(socket.AF_UNIX)
            stuck.append(sock)
            sock.connect(str(daemon.home.socket_path))
            sock.sendall(data)
        _status(daemon.home)
    finally:
        for sock in stuck:
            sock.close()
    _status(daemon.home)


def test_two_clis_at_once(daemon: DaemonProcess) -> None:
    holder = socket.socket(socket.AF_UNIX)
    with holder:
        # One connection stays open mid-frame all along, as a hung CLI would.
        holder.connect(str(daemon.home.socket_path))
        holder.sendall(b"\x00\x00\x00\x40")
        verbs = [("status", "--json"), ("id", "--json"), ("status", "--json"), ("ls", "--json")]
        clis = [
            subprocess.Popen(
                cli_command(daemon.home, *verb), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for verb in verbs
        ]
        for cli in clis:
            out, err = cli.communicate(timeout=60)
            assert cli.returncode == 0, err
            assert json.loads(out)
