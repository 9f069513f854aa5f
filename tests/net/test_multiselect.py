"""Choosing a new stream's protocol: header and first proposal in one write."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.io.abc import ReadWriteCloser
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError, MultiselectError
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

from p2pshare.identity import NodeKey
from p2pshare.net.host import running_host
from p2pshare.net.multiselect import PipelinedMultiselectClient, ReadFirstMultiselect

if TYPE_CHECKING:
    from libp2p.abc import INetStream
    from libp2p.host.basic_host import BasicHost

KAD = TProtocol("/ipfs/kad/1.0.0")
PING = TProtocol("/ipfs/ping/1.0.0")


class _Pipe(ReadWriteCloser):
    """One end of an in-memory stream, as the communicator reads and writes it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        await self._stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self._stream.receive_some(n))

    async def close(self) -> None:
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return None


async def _handler(_stream: INetStream) -> None:
    raise AssertionError("not called here")


async def negotiate(
    protocols: list[TProtocol], served: list[TProtocol]
) -> tuple[TProtocol | MultiselectClientError, _Pipe]:
    """What the client selects against py-libp2p's listener serving ``served``, and
    the client's end (its writes)."""
    left, right = trio.testing.memory_stream_pair()
    client_end, server_end = _Pipe(left), _Pipe(right)
    listener = Multiselect(dict.fromkeys(served, _handler))
    result: TProtocol | MultiselectClientError
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            # The listener's own error, once the client gives up, is not under test.
            with contextlib.suppress(Exception):
                await listener.negotiate(MultiselectCommunicator(server_end))

        nursery.start_soon(serve)
        communicator = MultiselectCommunicator(client_end)
        with trio.fail_after(5):
            try:
                result = await PipelinedMultiselectClient().select_one_of(protocols, communicator)
            except MultiselectClientError as exc:
                result = exc
            await client_end.close()
    return result, client_end


async def test_the_first_protocol_is_proposed_with_the_header_in_one_write() -> None:
    chosen, client = await negotiate([KAD], served=[KAD])
    assert chosen == KAD
    assert client.writes == [b"\x13/multistream/1.0.0\n\x10/ipfs/kad/1.0.0\n"]


async def test_a_listener_without_the_first_protocol_is_offered_the_next() -> None:
    chosen, client = await negotiate([KAD, PING], served=[PING])
    assert chosen == PING
    assert len(client.writes) == 2


async def test_a_listener_with_none_of_them_is_a_clear_error() -> None:
    chosen, _ = await negotiate([KAD, PING], served=[TProtocol("/other/1")])
    assert isinstance(chosen, MultiselectClientError)
    assert "not supported" in str(chosen)


async def test_a_listener_that_is_not_multistream_is_a_clear_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    client_end = _Pipe(left)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.send_all, b"\x06hello\n\x06hello\n")
        with pytest.raises(MultiselectClientError, match="mismatch"):
            await PipelinedMultiselectClient().select_one_of(
                [KAD], MultiselectCommunicator(client_end)
            )


@pytest.mark.parametrize("waiting_dialer", [False, True])
async def test_hosts_open_streams_with_the_pipelined_client(*, waiting_dialer: bool) -> None:
    """And p2pshare's listener also serves py-libp2p's dialer, which proposes only
    after the listener's header: within 10 s, where a stall would last py-libp2p's 30."""
    async with (
        running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as dialer,
        running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as listener,
    ):
        got = trio.Event()

        async def echo(stream: INetStream) -> None:
            await stream.write(await stream.read(5))
            got.set()

        listener.set_stream_handler(PING, echo)
        if waiting_dialer:
            cast("BasicHost", dialer).multiselect_client = MultiselectClient()
        with trio.fail_after(10):
            await dialer.connect(info_from_p2p_addr(listener.get_addrs()[0]))
            stream = await dialer.new_stream(listener.get_id(), [KAD, PING])
            assert stream.get_protocol() == PING
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"
            await got.wait()
            await stream.close()


async def listen(
    client: MultiselectClient, protocols: list[TProtocol], served: list[TProtocol]
) -> tuple[TProtocol | MultiselectClientError, TProtocol | MultiselectError | None]:
    """What ``client`` selects against p2pshare's listener serving ``served``, and
    what the listener chose."""
    left, right = trio.testing.memory_stream_pair()
    listener = ReadFirstMultiselect(dict.fromkeys(served, _handler))
    chosen: TProtocol | MultiselectError | None = None
    result: TProtocol | MultiselectClientError

    async def serve() -> None:
        nonlocal chosen
        try:
            chosen, _ = await listener.negotiate(MultiselectCommunicator(_Pipe(right)))
        except MultiselectError as exc:
            chosen = exc

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                result = await client.select_one_of(protocols, MultiselectCommunicator(_Pipe(left)))
            except MultiselectClientError as exc:
                result = exc
            await left.aclose()
    return result, chosen


@pytest.mark.parametrize("client", [PipelinedMultiselectClient(), MultiselectClient()])
async def test_the_read_first_listener_serves_pipelined_and_waiting_dialers(
    client: MultiselectClient,
) -> None:
    """py-libp2p's dialer waits for the listener's header before it proposes: a
    listener that waited for the proposal before writing its header would stall it."""
    assert await listen(client, [KAD, PING], served=[PING]) == (PING, PING)
    assert await listen(client, [KAD], served=[KAD]) == (KAD, KAD)


async def test_the_read_first_listener_refuses_what_it_lacks_and_a_bad_header() -> None:
    result, chosen = await listen(PipelinedMultiselectClient(), [KAD], served=[PING])
    assert isinstance(result, MultiselectClientError)
    assert isinstance(chosen, MultiselectError)
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"\x06hello\n")
    with trio.fail_after(5), pytest.raises(MultiselectError, match="mismatch"):
        await ReadFirstMultiselect().negotiate(MultiselectCommunicator(_Pipe(right)))


async def test_the_read_first_listener_lists_its_protocols() -> None:
    left, right = trio.testing.memory_stream_pair()
    listener = ReadFirstMultiselect(dict.fromkeys([KAD, PING], _handler))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.negotiate, MultiselectCommunicator(_Pipe(right)))
        dialer = MultiselectCommunicator(_Pipe(left))
        await dialer.write("/multistream/1.0.0")
        await dialer.write("ls")
        with trio.fail_after(5):
            assert await dialer.read() == "/multistream/1.0.0"
            assert await dialer.read() == f"{KAD}\n{PING}\n"
        nursery.cancel_scope.cancel()
