"""What a C library prints on stderr goes to the debug log, and only its own output."""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import TYPE_CHECKING

import pytest

from p2pshare.net.cstderr import quietly
from p2pshare.net.upnp import UpnpError, UpnpMapper
from tests.net.fake_igd import running_igd

if TYPE_CHECKING:
    from collections.abc import Callable

WAIT_S = 5.0


async def test_miniupnpc_s_connect_noise_goes_to_the_debug_log_not_the_terminal(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with running_igd() as (url, _):
        dead = url
    caplog.set_level(logging.DEBUG, logger="p2pshare.net.cstderr")
    with pytest.raises(UpnpError, match="no UPnP router description"):
        await UpnpMapper(dead).external_ip()
    # perror(3) in miniupnpc's connecthostport.c, on the file descriptor itself.
    assert "Connection refused" not in capfd.readouterr().err
    assert "miniupnpc wrote on stderr: connect: Connection refused" in caplog.text


def test_the_call_s_own_result_and_exception_come_back() -> None:
    assert quietly(lambda: 7, "test") == 7
    with pytest.raises(ZeroDivisionError):
        quietly(lambda: 1 // 0, "test")


def _while_quiet(during: Callable[[], object]) -> None:
    """Run ``during`` in this thread while a quiet call writes to fd 2 and waits for it."""
    started, done = threading.Event(), threading.Event()

    def work() -> None:
        os.write(2, b"from the library\n")
        started.set()
        assert done.wait(WAIT_S)

    caller = threading.Thread(target=quietly, args=(work, "test"))
    caller.start()
    try:
        assert started.wait(WAIT_S)
        during()
    finally:
        done.set()
        caller.join(WAIT_S)


def test_other_threads_keep_their_stderr_during_the_call(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A process-wide dup2 would swallow the daemon's own log lines written meanwhile."""
    _while_quiet(lambda: os.write(2, b"the daemon's own line\n"))
    err = capfd.readouterr().err
    assert "the daemon's own line" in err
    assert "from the library" not in err


def test_a_descriptor_closed_elsewhere_during_the_call_is_closed_at_once() -> None:
    """The quiet thread's copy of the descriptor table holds nothing else open: a
    socket the daemon closes meanwhile is closed then (its peer sees the end)."""
    read_end, write_end = os.pipe()
    seen_end: list[bool] = []

    def close_and_look() -> None:
        os.close(write_end)
        readable, _, _ = select.select([read_end], [], [], WAIT_S)
        seen_end.append(bool(readable) and os.read(read_end, 1) == b"")

    try:
        _while_quiet(close_and_look)
    finally:
        os.close(read_end)
    assert seen_end == [True]
