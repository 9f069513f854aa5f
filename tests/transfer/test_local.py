"""The in-memory pipe that carries a get of the node's own content (transfer/local.py)."""

from __future__ import annotations

import pytest
import trio

from p2pshare.transfer.local import pipe


async def test_the_pipe_carries_bytes_both_ways_in_pieces_of_at_most_max_bytes() -> None:
    left, right = pipe()
    await left.send_all(b"hello world")
    await right.send_all(memoryview(b"back"))
    assert await right.receive_some(5) == b"hello"
    assert await right.receive_some() == b" world"
    assert await left.receive_some(100) == b"back"


async def test_closing_one_end_is_eof_on_the_other_and_breaks_its_sends() -> None:
    left, right = pipe()
    await left.send_all(b"last")
    await left.aclose()
    assert await right.receive_some() == b"last"
    assert await right.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await right.send_all(b"too late")
