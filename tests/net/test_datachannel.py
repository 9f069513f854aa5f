"""The data channel between in-process libp2p hosts on 127.0.0.1.

Every test is bounded by trio.fail_after; nothing leaves the loopback interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pshare.identity import NodeKey
from p2pshare.net.datachannel import (
    DataChannelLimits,
    DataChannelOpenError,
    DataChannelServer,
    connect_offer,
    data_channel_ips,
    open_data_channel,
    request_offer,
)
from p2pshare.net.encrypted_stream import DataChannelIdleError, EncryptedStream
from p2pshare.net.host import running_host
from p2pshare.net.streams import HandlerGuard, HandlerLimits
from p2pshare.proto.datachannel import (
    CLIENT_HELLO_SIZE,
    SESSION_ID_SIZE,
    Channel,
    DataChannelRefusedError,
    derive_keys,
)
from p2pshare.proto.dataframes import (
    MAX_PLAINTEXT,
    MAX_WIRE_FRAME,
    Cipher,
    TruncatedStreamError,
)
from p2pshare.proto.transfer import Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from libp2p.abc import IHost

    from p2pshare.net.streams import ByteStream, LibP2PStream

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@dataclasses.dataclass
class Setup:
    server_host: IHost
    client_host: IHost
    server: DataChannelServer
    port: int = 0

    @property
    def server_id(self) -> str:
        return self.server_host.get_id().to_base58()

    @property
    def client_id(self) -> str:
        return self.client_host.get_id().to_base58()

    async def open(self) -> EncryptedStream:
        return await open_data_channel(
            self.client_host, self.server_id, [], offer_timeout=10, connect_timeout=10
        )


async def start(
    stack: AsyncExitStack,
    nursery: trio.Nursery,
    serve: Callable[[ByteStream, str], Awaitable[None]],
    data_host: str = "127.0.0.1",
    **kwargs: object,
) -> Setup:
    """Two connected hosts, and a data channel server on the first running in ``nursery``."""
    setup = await prepare(stack, serve, data_host, **kwargs)
    setup.port = await nursery.start(setup.server.run)
    return setup


async def prepare(
    stack: AsyncExitStack,
    serve: Callable[[ByteStream, str], Awaitable[None]],
    data_host: str = "127.0.0.1",
    **kwargs: object,
) -> Setup:
    server_host = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
    client_host = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
    guard = HandlerGuard(server_host, HandlerLimits())
    server = DataChannelServer(server_host, guard, data_host, serve=serve, **kwargs)  # type: ignore[arg-type]
    with trio.fail_after(10):
        await client_host.connect(info_from_p2p_addr(server_host.get_addrs()[0]))
    return Setup(server_host, client_host, server)


async def echo(stream: ByteStream, peer: str) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def receive_all(stream: ByteStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(MAX_PLAINTEXT):
        out += data
    return bytes(out)


async def exchange(stream: EncryptedStream, payload: bytes, *, seed: int = 1) -> bytes:
    """Send ``payload`` in random-sized pieces (some above 1 MiB) and collect the echo."""
    rng = random.Random(seed)
    received = b""

    async def collect() -> None:
        nonlocal received
        received = await receive_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        offset = 0
        while offset < len(payload):
            size = rng.choice([1, 100, 65535, 65536, MAX_PLAINTEXT, 3 * MAX_PLAINTEXT + 7])
            await stream.send_all(payload[offset : offset + size])
            offset += size
        await stream.send_eof()
    return received


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- it works ------------------------------------------------------------------------------


async def test_megabytes_arrive_intact_both_ways() -> None:
    peers: list[str] = []

    async def serve(stream: ByteStream, peer: str) -> None:
        peers.append(peer)
        await echo(stream, peer)

    payload = os.urandom(9 * MAX_PLAINTEXT + 12345)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, serve)
            stream = await setup.open()
            assert sha(await exchange(stream, payload)) == sha(payload)
            await stream.aclose()
            # Both ciphers, and the other direction first: the server sends, unasked.
            for cipher in Cipher:
                offer = await request_offer(
                    setup.client_host, setup.server_id, [], timeout=10, ciphers=[cipher]
                )
                assert offer.keys.cipher is cipher
                stream = await connect_offer(offer, timeout=10)
                assert sha(await exchange(stream, payload[:3_000_000], seed=2)) == sha(
                    payload[:3_000_000]
                )
                await stream.aclose()
            assert peers == [setup.client_id] * 3
            nursery.cancel_scope.cancel()


async def test_the_server_speaks_first_and_ends_with_a_clean_fin() -> None:
    blob = os.urandom(5 * MAX_PLAINTEXT + 3)

    async def serve(stream: ByteStream, peer: str) -> None:
        await stream.send_all(blob)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, serve)
            stream = await setup.open()
            assert await receive_all(stream) == blob
            assert await stream.receive_some() == b"", "EOF stays EOF"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_transfer_runs_unchanged_over_the_data_channel(tmp_path: Path) -> None:
    from p2pshare.proto.cid import ContentId
    from p2pshare.store.catalog import Catalog
    from p2pshare.store.shares import ShareStore
    from p2pshare.transfer.downloader import Download, Source
    from p2pshare.transfer.source import LocalContent
    from p2pshare.transfer.uploader import serve_transfer

    root = tmp_path
    seed_catalog, catalog = Catalog(root / "seed.sqlite"), Catalog(root / "get.sqlite")
    try:
        seed = ShareStore(seed_catalog, root / "content", NodeKey.generate(), 1 << 20)
        data = os.urandom(6 * (1 << 20) + 77)
        (root / "file.bin").write_bytes(data)
        cid = ContentId.parse(seed.commit(seed.prepare(root / "file.bin")).cid)
        local = LocalContent(ShareStore(catalog, root / "c2", NodeKey.generate(), 1 << 20))
        source = LocalContent(seed)

        async def serve(stream: ByteStream, peer: str) -> None:
            await serve_transfer(stream, source, peer=peer)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                setup = await start(stack, nursery, serve)
                opened: list[EncryptedStream] = []

                async def open_stream(src: Source) -> ByteStream:
                    stream = await open_data_channel(
                        setup.client_host,
                        src.peer_id,
                        list(src.addrs),
                        offer_timeout=10,
                        connect_timeout=10,
                    )
                    opened.append(stream)
                    return stream

                async def no_more(_want: int, _ask: list[str]) -> list[Source]:
                    return []

                download = Download(
                    cid=cid,
                    dest=root / "out.bin",
                    force=False,
                    catalog=catalog,
                    local=local,
                    open_stream=open_stream,
                    find_sources=no_more,
                    hints=[Source(setup.server_id)],
                )
                report = await download.run()
                nursery.cancel_scope.cancel()
        assert opened, "the download used the data channel"
        assert sha((root / "out.bin").read_bytes()) == sha(data)
        assert report.requested_bytes == len(data)
    finally:
        seed_catalog.close()
        catalog.close()


# --- who gets in -----------------------------------------------------------------------------


async def raw_attempt(port: int, data: bytes, *, then_close: bool = True) -> bytes:
    """Connect, send ``data`` (and EOF), and return what the server sends before it closes."""
    conn = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        try:
            await conn.send_all(data)
            if then_close:
                await conn.send_eof()
        except trio.BrokenResourceError:
            pass
        out = b""
        try:
            while chunk := await conn.receive_some():
                out += chunk
        except trio.BrokenResourceError:
            pass
        return out
    finally:
        await conn.aclose()


async def test_guessed_ids_garbage_and_stolen_ids_are_refused_and_serving_goes_on() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(
                stack, nursery, echo, limits=DataChannelLimits(handshake_timeout=0.5)
            )
            # A guessed session id, with or without something that looks like a hello.
            assert await raw_attempt(setup.port, os.urandom(SESSION_ID_SIZE)) == b""
            assert await raw_attempt(setup.port, os.urandom(SESSION_ID_SIZE + 61)) == b""
            assert await raw_attempt(setup.port, b"GET / HTTP/1.1\r\n\r\n") == b""
            # Less than a session id, then close; nothing at all; silence until the timeout.
            assert await raw_attempt(setup.port, b"hi") == b""
            assert await raw_attempt(setup.port, b"") == b""
            assert await raw_attempt(setup.port, b"", then_close=False) == b""
            # A real session id seen on the wire, with a hello forged without the keys:
            # refused, and the session is burned for everyone.
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            forged = derive_keys(
                secret=os.urandom(32),
                client_nonce=os.urandom(32),
                server_nonce=os.urandom(32),
                session_id=offer.keys.session_id,
                cipher=offer.keys.cipher,
                client_peer=setup.client_id,
                server_peer=setup.server_id,
            )
            hello = Channel(forged, Role.CLIENT).client_hello()
            assert await raw_attempt(setup.port, hello) == b""
            with pytest.raises(DataChannelOpenError):
                await connect_offer(offer, timeout=10)
            assert setup.server.refused["UnknownSessionError"] == 4
            assert setup.server.refused["FrameAuthenticationError"] == 1
            assert setup.server.refused["handshake_timeout"] == 1
            assert setup.server.refused["TruncatedStreamError"] == 2
            # Everyone else is still served.
            stream = await setup.open()
            assert await exchange(stream, b"still here") == b"still here"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def recording_proxy(
    target: int, record: bytearray, *, task_status: trio.TaskStatus[int]
) -> None:
    """Forward one connection to ``target``, recording what the client sends."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    task_status.started(listener.socket.getsockname()[1])
    client = await listener.accept()
    await listener.aclose()
    upstream = await trio.open_tcp_stream("127.0.0.1", target)

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, keep: bool) -> None:
        try:
            while data := await src.receive_some():
                if keep:
                    record.extend(data)
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            nursery.cancel_scope.cancel()

    async with client, upstream, trio.open_nursery() as nursery:
        nursery.start_soon(pump, client, upstream, True)
        nursery.start_soon(pump, upstream, client, False)


async def test_replaying_the_bytes_of_a_finished_session_gets_nothing() -> None:
    record = bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo)
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            proxy_port = await nursery.start(recording_proxy, setup.port, record)
            stream = await connect_offer(dataclasses.replace(offer, port=proxy_port), timeout=10)
            secret_text = b"attack at dawn" * 1000
            assert await exchange(stream, secret_text) == secret_text
            await stream.aclose()
            assert secret_text[:14] not in record, "the wire carries ciphertext only"
            assert record.startswith(offer.keys.session_id)
            # The attacker replays everything the client sent, then just the hello.
            assert await raw_attempt(setup.port, bytes(record)) == b""
            assert await raw_attempt(setup.port, bytes(record[:CLIENT_HELLO_SIZE])) == b""
            assert setup.server.refused["UnknownSessionError"] == 2
            nursery.cancel_scope.cancel()


async def test_an_expired_offer_is_refused() -> None:
    now = [1000.0]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(
                stack,
                nursery,
                echo,
                limits=DataChannelLimits(session_ttl=30),
                clock=lambda: now[0],
            )
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            now[0] += 30
            with pytest.raises(DataChannelOpenError, match="handshake"):
                await connect_offer(offer, timeout=10)
            assert setup.server.refused["UnknownSessionError"] == 1
            # An offer used within its time works.
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            now[0] += 29.9
            stream = await connect_offer(offer, timeout=10)
            assert await exchange(stream, b"in time") == b"in time"
            await stream.aclose()
            nursery.cancel_scope.cancel()


# --- failing fast, so the caller falls back ------------------------------------------------------


async def test_a_closed_data_port_fails_fast() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo)
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            closed = trio.socket.socket()
            await closed.bind(("127.0.0.1", 0))
            closed_port = closed.getsockname()[1]
            closed.close()
            started = trio.current_time()
            with pytest.raises(DataChannelOpenError) as info:
                await connect_offer(dataclasses.replace(offer, port=closed_port), timeout=10)
            assert trio.current_time() - started < 2
            assert isinstance(info.value.__cause__, OSError)
            nursery.cancel_scope.cancel()


async def test_a_slow_offer_has_its_own_time_apart_from_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy peer may take longer to offer than its data port may take to answer: each
    has its own budget.  With one deadline for both, a crowd's downloaders took nearly
    every slow offer for a missing data channel and fell back to libp2p streams."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await prepare(stack, echo)
            handle_open = setup.server._handle_open

            async def busy(stream: LibP2PStream) -> None:
                await trio.sleep(1.0)
                await handle_open(stream)

            monkeypatch.setattr(setup.server, "_handle_open", busy)
            setup.port = await nursery.start(setup.server.run)
            stream = await open_data_channel(
                setup.client_host, setup.server_id, [], offer_timeout=10, connect_timeout=0.5
            )
            assert await exchange(stream, b"after a slow offer") == b"after a slow offer"
            await stream.aclose()
            with pytest.raises(DataChannelOpenError, match="no data channel offer in time"):
                await open_data_channel(
                    setup.client_host, setup.server_id, [], offer_timeout=0.5, connect_timeout=10
                )
            nursery.cancel_scope.cancel()


async def test_an_offer_with_no_time_left_fails_as_an_open_error() -> None:
    """The caller's deadline may pass before the connection is tried (a busy node): the
    download then falls back to libp2p, it does not fail on an internal error."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo)
            offer = await request_offer(setup.client_host, setup.server_id, [], timeout=10)
            two_ips = dataclasses.replace(offer, ips=("127.0.0.1", "127.0.0.2"))
            for _ in range(20):
                with pytest.raises(DataChannelOpenError):
                    await connect_offer(two_ips, timeout=0)
            nursery.cancel_scope.cancel()


async def test_a_peer_without_a_data_channel_fails_fast() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            b = await stack.enter_async_context(running_host(NodeKey.generate(), LOOPBACK))
            await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
            started = trio.current_time()
            with pytest.raises(DataChannelOpenError):
                await open_data_channel(
                    a, b.get_id().to_base58(), [], offer_timeout=10, connect_timeout=10
                )
            assert trio.current_time() - started < 5


@pytest.mark.parametrize(
    "limits",
    [DataChannelLimits(max_connections_per_peer=1), DataChannelLimits(max_connections=1)],
    ids=["per_peer_cap", "total_cap"],
)
async def test_a_busy_server_refuses_and_a_stopped_one_too(limits: DataChannelLimits) -> None:
    """Either cap refuses at the OPEN, so the peer hears "busy" at once; refused only at
    the claim, it saw its TCP connection closed during the handshake."""
    gate = trio.Event()

    async def hold(stream: ByteStream, peer: str) -> None:
        await gate.wait()

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            setup = await prepare(stack, hold, limits=limits)
            async with trio.open_nursery() as nursery:
                await nursery.start(setup.server.run)
                first = await setup.open()
                with pytest.raises(DataChannelOpenError) as info:
                    await setup.open()
                assert isinstance(info.value.__cause__, DataChannelRefusedError)
                assert info.value.__cause__.code == "busy"
                assert setup.server.refused == {"SessionLimitError": 1}
                gate.set()
                assert await first.receive_some() == b""
                await first.aclose()
                nursery.cancel_scope.cancel()
            # The handler stays registered on the host; with run() ended it refuses.
            with pytest.raises(DataChannelOpenError) as info:
                await setup.open()
            assert isinstance(info.value.__cause__, DataChannelRefusedError)
            assert info.value.__cause__.code == "unavailable"


async def test_one_failing_connection_leaves_the_others_alone() -> None:
    async def serve(stream: ByteStream, peer: str) -> None:
        first = await stream.receive_some()
        if first == b"boom":
            await stream.send_all(b"partial answer")
            raise RuntimeError("a bug while serving one connection")
        await stream.send_all(first)
        await echo(stream, peer)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, serve)
            good, bad = await setup.open(), await setup.open()
            await good.send_all(b"hello")
            assert await good.receive_some() == b"hello"
            await bad.send_all(b"boom")
            assert await bad.receive_some() == b"partial answer"
            with pytest.raises(TruncatedStreamError):
                await bad.receive_some()
            await bad.aclose()
            payload = os.urandom(2 * MAX_PLAINTEXT)
            assert await exchange(good, payload) == payload
            await good.aclose()
            nursery.cancel_scope.cancel()


# --- the stream itself, over a socket pair -----------------------------------------------------


def stream_pair(
    *, crypto_in_thread: bool | None, idle_timeout: float | None = None
) -> tuple[EncryptedStream, EncryptedStream]:
    a, b = trio.socket.socketpair()
    return (
        encrypted(
            trio.SocketStream(a),
            Role.CLIENT,
            crypto_in_thread=crypto_in_thread,
            idle_timeout=idle_timeout,
        ),
        encrypted(
            trio.SocketStream(b),
            Role.SERVER,
            crypto_in_thread=crypto_in_thread,
            idle_timeout=idle_timeout,
        ),
    )


def channel(role: Role) -> Channel:
    keys = derive_keys(
        secret=b"k" * 32,
        client_nonce=b"c" * 32,
        server_nonce=b"n" * 32,
        session_id=b"s" * 16,
        cipher=Cipher.AES_256_GCM,
        client_peer="client",
        server_peer="server",
    )
    return Channel(keys, role)


def encrypted(
    stream: trio.SocketStream,
    role: Role,
    *,
    crypto_in_thread: bool | None,
    idle_timeout: float | None = None,
) -> EncryptedStream:
    return EncryptedStream(
        stream,
        channel(role),
        peer_id="server" if role is Role.CLIENT else "client",
        crypto_in_thread=crypto_in_thread,
        idle_timeout=idle_timeout,
    )


@pytest.mark.parametrize("crypto_in_thread", [True, False, None])
async def test_stream_pair_bulk_and_small_reads(crypto_in_thread: bool | None) -> None:
    left, right = stream_pair(crypto_in_thread=crypto_in_thread)
    payload = os.urandom(4 * MAX_PLAINTEXT + 999)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await left.send_all(payload)
                await left.send_all(memoryview(payload)[:10])
                await left.aclose()

            nursery.start_soon(send)
            got = bytearray()
            while data := await right.receive_some(7777):
                assert len(data) <= 7777
                got += data
        assert bytes(got) == payload + payload[:10]
        await right.aclose()


async def test_a_frame_that_trickles_in_wakes_the_receiver_once_it_is_whole() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    sender = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listener.accept()
    receiver = encrypted(accepted, Role.SERVER, crypto_in_thread=False)
    payload = os.urandom(MAX_PLAINTEXT)
    buffer = bytearray(MAX_WIRE_FRAME)
    frame = bytes(buffer[: channel(Role.CLIENT).sealer.seal_into(payload, buffer)])
    got: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                got.append(await receiver.receive_some())

            nursery.start_soon(receive)
            await sender.send_all(frame[:1000])
            await trio.testing.wait_all_tasks_blocked()
            # Waiting for the rest of an announced frame: the kernel holds the wake-up.
            lowat = accepted.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVLOWAT)
            assert lowat == min(len(frame) - 1000, 768 * 1024)
            assert got == []
            await sender.send_all(frame[1000:])
    assert got == [payload]
    await sender.aclose()
    await receiver.aclose()
    await listener.aclose()


async def test_stream_rules_of_use() -> None:
    left, right = stream_pair(crypto_in_thread=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(right.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await right.receive_some()
            await left.send_all(b"x")
        with pytest.raises(ValueError, match="max_bytes"):
            await right.receive_some(0)
        await left.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"after eof")
        assert await right.receive_some() == b""
        await right.send_all(b"the other direction still works")
        assert await left.receive_some() == b"the other direction still works"
        await left.aclose()
        await left.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"after close")
        with pytest.raises(trio.ClosedResourceError):
            await left.receive_some()
        # A reset is not a clean end.
        await right.reset()


async def test_a_reset_or_a_cut_connection_is_a_truncation() -> None:
    left, right = stream_pair(crypto_in_thread=None)
    with trio.fail_after(10):
        await left.send_all(b"some data")
        await left.reset()
        assert await right.receive_some() == b"some data"
        with pytest.raises(TruncatedStreamError):
            await right.receive_some()
        await right.aclose()


# --- idle connections (trio's MockClock: the clock jumps whenever every task waits) ---------


async def test_a_silent_peer_is_dropped_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = stream_pair(crypto_in_thread=None, idle_timeout=30)
    await left.send_all(b"hello")
    assert await right.receive_some() == b"hello"
    started = trio.current_time()
    with pytest.raises(DataChannelIdleError):
        await right.receive_some()
    assert trio.current_time() - started == pytest.approx(30)
    await left.reset()
    await right.reset()


async def test_sending_keeps_a_waiting_receive_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = stream_pair(crypto_in_thread=None, idle_timeout=30)
    started = trio.current_time()
    failed_at = 0.0

    async def wait_for_data() -> None:
        nonlocal failed_at
        with pytest.raises(DataChannelIdleError):
            await right.receive_some()
        failed_at = trio.current_time() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_data)
        # right sends every 20 s for 100 s; left reads it and says nothing back.
        for _ in range(5):
            await trio.sleep(20)
            await right.send_all(b"tick")
            assert await left.receive_some() == b"tick"
    assert failed_at == pytest.approx(130)
    await left.reset()
    await right.reset()


async def test_a_peer_that_stops_reading_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = stream_pair(crypto_in_thread=False, idle_timeout=30)
    started = trio.current_time()
    # Far more than the socket buffers hold: the send has to wait for right.
    with pytest.raises(DataChannelIdleError):
        await left.send_all(bytes(64 * MAX_PLAINTEXT))
    assert trio.current_time() - started == pytest.approx(30)
    await left.reset()
    await right.reset()


async def test_a_slow_reader_is_not_idle(autojump_clock: trio.testing.MockClock) -> None:
    # TCP, as in use: a unix socket pair frees buffer space only per whole message.
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    connected = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    reader = await listener.accept()
    left = encrypted(connected, Role.CLIENT, crypto_in_thread=False, idle_timeout=30)
    wire = 3 * (MAX_PLAINTEXT + 4 + 16)
    received = 0

    async def read_slowly() -> None:
        nonlocal received
        while received < wire:
            received += len(await reader.receive_some(256 * 1024))
            await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        # Each frame takes many reads 10 s apart to drain, far longer than the idle
        # timeout, but every partial send is progress.
        await left.send_all(bytes(3 * MAX_PLAINTEXT))
    assert received == wire
    assert trio.current_time() > 100
    await left.reset()
    await reader.aclose()
    await listener.aclose()


async def test_the_server_drops_a_client_that_goes_silent() -> None:
    outcome: list[BaseException] = []
    served = trio.Event()

    async def wait_for_requests(stream: ByteStream, peer: str) -> None:
        try:
            await stream.receive_some()
        except DataChannelIdleError as exc:
            outcome.append(exc)
            raise
        finally:
            served.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            limits = DataChannelLimits(idle_timeout=0.2)
            setup = await start(stack, nursery, wait_for_requests, limits=limits)
            client = await setup.open()
            await served.wait()
            assert isinstance(outcome[0], DataChannelIdleError)
            # The server reset the connection: no FIN, so the client sees a truncation.
            with pytest.raises(TruncatedStreamError):
                await client.receive_some()
            assert setup.server.active_connections() == 0
            await client.aclose()
            nursery.cancel_scope.cancel()


# --- which address the data port is looked for at -------------------------------------------


def test_the_connection_ip_comes_first_then_the_announced_ones() -> None:
    announced = [
        "/ip4/203.0.113.7/tcp/4001",
        "/ip4/0.0.0.0/tcp/4001",
        "/dns4/example.org/tcp/4001",
        "/ip6/2001:db8::1/tcp/4001",
        "/ip4/198.51.100.1/tcp/4001",
        "not a multiaddr",
        "/ip4/203.0.113.7/tcp/4002",
    ]
    assert data_channel_ips("192.0.2.1", announced) == (
        "192.0.2.1",
        "203.0.113.7",
        "2001:db8::1",
        "198.51.100.1",
    )
    assert data_channel_ips("203.0.113.7", announced[:1]) == ("203.0.113.7",)
    assert data_channel_ips(None, announced[3:4]) == ("2001:db8::1",)
    assert data_channel_ips(None, []) == ()


async def test_a_node_behind_nat_is_reached_at_its_announced_address() -> None:
    # The provider forwards its data port only on its announced "public" address
    # (127.0.0.2 here); the libp2p connection shows another one (127.0.0.1), where
    # nothing listens on that port.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo, "127.0.0.2")
            with pytest.raises(DataChannelOpenError):
                await setup.open()
            announced = [f"/ip4/127.0.0.2/tcp/4001/p2p/{setup.server_id}"]
            stream = await open_data_channel(
                setup.client_host, setup.server_id, announced, offer_timeout=10, connect_timeout=10
            )
            assert await exchange(stream, b"through the forwarded port") == (
                b"through the forwarded port"
            )
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_flood_of_bad_connections_logs_one_line_then_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2pshare.net.datachannel")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo, refusal_log_interval=2.0)
            caplog.clear()
            for _ in range(200):
                await raw_attempt(setup.port, b"x" * 10)
            while sum(setup.server.refused.values()) < 200:
                await trio.sleep(0.01)
            refusals = [r for r in caplog.records if "data connection" in r.getMessage()]
            assert len(refusals) == 1
            assert refusals[0].getMessage().startswith("refused a data connection: ")
            while not any("199 more in the last" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.1)
            summaries = [
                r.getMessage() for r in caplog.records if "more in the last" in r.getMessage()
            ]
            assert len(summaries) == 1
            assert summaries[0].startswith(
                "data connections refused during the handshake: 199 more in the last "
            )
            nursery.cancel_scope.cancel()


async def test_a_peer_the_data_port_is_unreachable_from_is_refused_at_once() -> None:
    # p2pshare.net.reachability decides (relayed, or behind NAT); the server answers
    # REFUSE right away, so the client falls back to libp2p without a dial timeout.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            setup = await start(stack, nursery, echo, refuse=lambda _stream: "relayed")
            started = trio.current_time()
            with pytest.raises(DataChannelOpenError) as info:
                await setup.open()
            assert trio.current_time() - started < 2
            assert isinstance(info.value.__cause__, DataChannelRefusedError)
            assert info.value.__cause__.code == "unavailable"
            assert setup.server.refused["unreachable"] == 1
            nursery.cancel_scope.cancel()
