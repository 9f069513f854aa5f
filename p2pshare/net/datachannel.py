"""The data channel: bulk bytes over an AEAD-framed TCP connection, set up over libp2p.

py-libp2p's Noise + Yamux streams carry about 50 MB/s; the transfer protocol runs
unchanged over an :class:`EncryptedStream` instead, which is a plain trio TCP
connection carrying 1 MiB AEAD frames (sans-IO part and wire format:
p2pshare.proto.datachannel; security argument: docs/data-channel.md).

* :class:`DataChannelServer` answers OPEN on ``/p2pshare/data/1.0.0`` with a fresh
  single-use session (secret, nonce, port), listens on a TCP port, checks each
  connection's proof of the session key and hands the stream to ``serve``.
* :func:`open_data_channel` asks a peer for a session and connects; any failure is a
  :class:`DataChannelOpenError`, and the caller falls back to a libp2p stream.

A connection on which nothing moves either way for ``idle_timeout`` seconds (the peer
went silent, vanished without a FIN or RST, or stopped reading) fails with
:class:`DataChannelIdleError`, so it never holds a task and a connection slot forever.

What keeps it fast: 1 MiB frames, a preallocated receive buffer filled with
``recv_into`` (no bytes joined or sliced per read; the buffer and the frame reassembly
are the sans-IO FrameReader's), ``encrypt_into`` a preallocated
send buffer, and the AEAD of large frames inline while it is fast (AES-NI: 0.15 ms per
MiB) or in a worker thread once it is measured slow (OFFLOAD_ABOVE in
p2pshare.net.encrypted_stream, which holds the stream itself).

Typical use::

    server = DataChannelServer(host, guard, "0.0.0.0", serve=serve)
    port = await nursery.start(server.run)
    ...
    try:
        stream = await open_data_channel(
            host, peer_id, addrs, offer_timeout=15, connect_timeout=5
        )
    except DataChannelOpenError:
        stream = await open_stream(host, peer_id, addrs, TRANSFER_PROTOCOL, timeout)
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import multiaddr
import trio

from p2pshare.errors import P2PShareError, RemoteError, RemoteProtocolError, UserError
from p2pshare.net.encrypted_stream import (
    FIN_GRACE,
    IDLE_TIMEOUT,
    EncryptedStream,
)
from p2pshare.net.logsummary import DEFAULT_INTERVAL, LogSummariser
from p2pshare.net.peers import open_stream
from p2pshare.net.streams import StreamBrokenError
from p2pshare.proto.datachannel import (
    CLIENT_HELLO_SIZE,
    DEFAULT_CIPHERS,
    MAX_SETUP_FRAME,
    NONCE_SIZE,
    PROTOCOL_ID,
    SECRET_SIZE,
    SERVER_HELLO_SIZE,
    SESSION_ID_SIZE,
    Channel,
    ChannelOffer,
    ChannelVersionError,
    DataChannelRefusedError,
    NoCommonCipherError,
    Open,
    PendingSession,
    Refuse,
    RefuseCode,
    SessionKeys,
    SessionLimitError,
    SessionTable,
    client_keys,
    decode_open,
    decode_reply,
    encode_open,
    encode_reply,
    refusal_for,
)
from p2pshare.proto.dataframes import (
    TruncatedStreamError,
)
from p2pshare.proto.framing import FrameDecoder
from p2pshare.proto.transfer import Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from libp2p.abc import IHost

    from p2pshare.net.streams import ByteStream, HandlerGuard, LibP2PStream
    from p2pshare.proto.dataframes import Cipher

log = logging.getLogger(__name__)

REFUSALS_SUMMARY = "data connections refused during the handshake"


# Addresses of one peer tried for its data port: the connection's, then a few it announces.
MAX_DATA_IPS: Final = 4
_UNSPECIFIED: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared, never bound


class DataChannelOpenError(RemoteError):
    """No data channel to this peer now; use the libp2p stream instead.

    ``__cause__`` holds what went wrong (a refusal, a timeout, a closed port, a
    failed handshake).
    """


class DataChannelSetupError(UserError):
    """The data channel listener cannot start (port taken, address not ours)."""


@dataclass(frozen=True)
class DataChannelLimits:
    """Bounds of a :class:`DataChannelServer`."""

    session_ttl: float = 30.0
    setup_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_pending_sessions: int = 128
    max_pending_per_peer: int = 8
    max_handshakes: int = 32
    max_connections: int = 64
    max_connections_per_peer: int = 8
    idle_timeout: float | None = IDLE_TIMEOUT


async def _receive_exact(stream: trio.SocketStream, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes, reading no further (what follows belongs to the channel)."""
    data = bytearray()
    while len(data) < size:
        try:
            piece = await stream.receive_some(size - len(data))
        except trio.BrokenResourceError as exc:
            raise StreamBrokenError(f"the connection broke during the {what}: {exc!r}") from exc
        if not piece:
            raise TruncatedStreamError(f"the connection closed during the {what}")
        data += piece
    return bytes(data)


async def _receive_setup_frame(stream: ByteStream, what: str) -> bytes:
    """One length-prefixed setup message from a libp2p stream."""
    decoder = FrameDecoder(MAX_SETUP_FRAME)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(MAX_SETUP_FRAME)
        if not data:
            raise RemoteProtocolError(f"the stream closed before the {what}")
        decoder.feed(bytes(data))
    return frame


# --- the server -------------------------------------------------------------------------


class DataChannelServer:
    """Offers data channels on ``/p2pshare/data/1.0.0`` and serves the TCP connections.

    ``serve(stream, peer_id)`` runs once per authenticated connection, in its own
    task; ``peer_id`` is the libp2p peer that asked for the session.  When ``serve``
    returns, the stream is closed with a FIN; when it raises, the error is logged and
    the connection reset.  Nothing one connection does reaches another or the host.

    Run it in the daemon's nursery: ``port = await nursery.start(server.run)``.
    ``refuse(stream)`` names a reason not to offer a session on that libp2p stream (the
    port is unreachable from that peer: p2pshare.net.reachability), or None;
    ``offer_port(stream, port)`` the port to name in the offer (a router's external port
    for a peer that comes through its mapping: p2pshare.net.portmap).
    ``refused`` counts turned-away OPENs and connections by reason (an exception's
    class name, or ``handshake_timeout``, ``too_many_handshakes``, ``not_running``,
    ``bad_open``, ``unreachable``, ``connection_error``, ``internal``).
    """

    def __init__(
        self,
        host: IHost,
        guard: HandlerGuard,
        listen_host: str,
        port: int = 0,
        *,
        serve: Callable[[ByteStream, str], Awaitable[None]],
        refuse: Callable[[LibP2PStream], str | None] = lambda _stream: None,
        offer_port: Callable[[LibP2PStream, int], int] = lambda _stream, port: port,
        limits: DataChannelLimits | None = None,
        ciphers: Sequence[Cipher] = DEFAULT_CIPHERS,
        clock: Callable[[], float] = trio.current_time,
        refusal_log_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._host = host
        self._guard = guard
        self._listen_host = listen_host
        self._requested_port = port
        self._serve = serve
        self._refuse = refuse
        self._offer_port = offer_port
        self._limits = limits or DataChannelLimits()
        self._ciphers = tuple(ciphers)
        self._clock = clock
        self._table = SessionTable(
            ttl=self._limits.session_ttl,
            max_pending=self._limits.max_pending_sessions,
            max_pending_per_peer=self._limits.max_pending_per_peer,
        )
        self._port: int | None = None
        self._handshakes = 0
        self._active: Counter[str] = Counter()
        self._registered = False
        # Why connections or OPENs were turned away, by reason (for status and tests).
        self.refused: Counter[str] = Counter()
        # One line per refused connection would let anyone flood the log.
        self._refusal_log = LogSummariser(refusal_log_interval)

    @property
    def port(self) -> int | None:
        """The TCP port offered to peers, or None while not running."""
        return self._port

    def active_connections(self, peer_id: str | None = None) -> int:
        return self._active[peer_id] if peer_id is not None else sum(self._active.values())

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, offer sessions and serve connections until cancelled; starts with the port."""
        try:
            listeners = await trio.open_tcp_listeners(self._requested_port, host=self._listen_host)
        except OSError as exc:
            raise DataChannelSetupError(
                f"cannot listen for data channels on {self._listen_host}"
                f" port {self._requested_port}: {exc.strerror or exc}"
            ) from exc
        try:
            self._port = int(listeners[0].socket.getsockname()[1])
            if not self._registered:
                self._guard.register(PROTOCOL_ID, self._handle_open)
                self._registered = True
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                nursery.start_soon(self._flush_refusal_log)
                log.info("data channels on %s port %d", self._listen_host, self._port)
                task_status.started(self._port)
        finally:
            self._port = None
            for listener in listeners:
                await listener.aclose()

    # -- OPEN on libp2p

    async def _handle_open(self, stream: LibP2PStream) -> None:
        peer = stream.peer_id
        try:
            with trio.fail_after(self._limits.setup_timeout):
                request_bytes = await _receive_setup_frame(stream, "OPEN")
        except trio.TooSlowError:
            raise RemoteProtocolError(f"{peer} sent no OPEN in time") from None
        reply: ChannelOffer | Refuse
        try:
            request = decode_open(request_bytes)
            if why := self._refuse(stream):
                # Not reachable from this peer: saves it the dial's timeout.
                self.refused["unreachable"] += 1
                reply = Refuse(RefuseCode.UNAVAILABLE, why)
            else:
                reply = self._offer(request, peer, stream)
        except (ChannelVersionError, NoCommonCipherError, SessionLimitError) as exc:
            self.refused[type(exc).__name__] += 1
            reply = refusal_for(exc)
        except RemoteProtocolError as exc:
            self.refused["bad_open"] += 1
            log.info("malformed data channel OPEN from %s: %s", peer, exc)
            reply = refusal_for(exc)
        await stream.send_all(encode_reply(reply))

    def _offer(self, request: Open, peer: str, stream: LibP2PStream) -> ChannelOffer | Refuse:
        port = self._port
        if port is None:
            self.refused["not_running"] += 1
            return Refuse(RefuseCode.UNAVAILABLE, "this node is not accepting data channels now")
        # Refused here, the peer learns it is busy at once; refused at the claim (checked
        # again there, for connections made meanwhile) it sees a connection close.
        self._check_room(peer)
        return self._table.offer(
            request,
            peer_id=peer,
            server_peer=self._host.get_id().to_base58(),
            session_id=secrets.token_bytes(SESSION_ID_SIZE),
            server_nonce=secrets.token_bytes(NONCE_SIZE),
            secret=secrets.token_bytes(SECRET_SIZE),
            port=self._offer_port(stream, port),
            now=self._clock(),
            supported=self._ciphers,
        )

    # -- TCP

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn = await listener.accept()
            except OSError as exc:
                # Out of file descriptors and the like: wait a little, keep serving.
                log.warning("accepting a data connection failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._handshakes >= self._limits.max_handshakes:
                self.refused["too_many_handshakes"] += 1
                await conn.aclose()
                continue
            self._handshakes += 1
            nursery.start_soon(self._connection, conn)

    async def _connection(self, conn: trio.SocketStream) -> None:
        peer: str | None = None
        stream: EncryptedStream | None = None
        try:
            with trio.fail_after(self._limits.handshake_timeout):
                session = await self._claim(conn)
                peer = session.peer_id
                # Counted from the claim on, so concurrent handshakes respect the caps.
                self._active[peer] += 1
                stream = await self._prove(conn, session)
        except Exception as exc:  # noqa: BLE001 - every failure closes this connection only
            self._note_refusal(exc)
        finally:
            self._handshakes -= 1
            if stream is None:
                if peer is not None:
                    self._release(peer)
                # Closes at once, also when cancelled.
                await conn.aclose()
        if stream is None or peer is None:
            return
        try:
            await self._serve_one(stream, peer)
        finally:
            self._release(peer)

    async def _serve_one(self, stream: EncryptedStream, peer: str) -> None:
        clean = False
        try:
            await self._serve(stream, peer)
            clean = True
        except RemoteError as exc:
            log.info("data channel from %s: %s; connection reset", peer, exc)
        except Exception:
            log.exception("serving a data channel from %s failed; connection reset", peer)
        finally:
            if clean:
                await stream.aclose()
            else:
                await stream.reset()

    def _note_refusal(self, exc: Exception) -> None:
        """Count a failed handshake; log it through the summariser (anyone can cause one)."""
        level = logging.INFO
        if isinstance(exc, trio.TooSlowError):
            reason, message = (
                "handshake_timeout",
                "a data connection did not complete its handshake in time",
            )
        elif isinstance(exc, RemoteError):
            reason, message = type(exc).__name__, f"refused a data connection: {exc}"
        elif isinstance(exc, (OSError, trio.BrokenResourceError)):
            reason = "connection_error"
            message = f"a data connection failed during its handshake: {exc!r}"
        else:
            reason, message, level = "internal", "a data connection handshake failed", logging.ERROR
        self.refused[reason] += 1
        full, summary = self._refusal_log.record(message, self._clock())
        if summary is not None:
            log.info("%s", summary.sentence(REFUSALS_SUMMARY))
        if full:
            log.log(level, "%s", message, exc_info=exc if level >= logging.ERROR else None)

    async def _flush_refusal_log(self) -> None:
        while True:
            await trio.sleep(self._refusal_log.interval)
            summary = self._refusal_log.flush(self._clock())
            if summary is not None:
                log.info("%s", summary.sentence(REFUSALS_SUMMARY))

    def _release(self, peer: str) -> None:
        self._active[peer] -= 1
        if self._active[peer] <= 0:
            del self._active[peer]

    async def _claim(self, conn: trio.SocketStream) -> PendingSession:
        session_id = await _receive_exact(conn, SESSION_ID_SIZE, "handshake")
        session = self._table.claim(session_id, self._clock())
        self._check_room(session.peer_id)
        return session

    def _check_room(self, peer: str) -> None:
        """Refuse one more data channel from ``peer`` past either connection cap."""
        if self._active[peer] >= self._limits.max_connections_per_peer:
            raise SessionLimitError(f"{peer} has too many data channels open")
        if self.active_connections() >= self._limits.max_connections:
            raise SessionLimitError(
                f"this node has as many data channels open as it takes ({peer})"
            )

    async def _prove(self, conn: trio.SocketStream, session: PendingSession) -> EncryptedStream:
        peer = session.peer_id
        channel = Channel(session.keys, Role.SERVER)
        hello = await _receive_exact(conn, CLIENT_HELLO_SIZE - SESSION_ID_SIZE, "handshake")
        channel.accept_client_hello(hello)
        await conn.send_all(channel.server_hello())
        return EncryptedStream(conn, channel, peer_id=peer, idle_timeout=self._limits.idle_timeout)


# --- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataOffer:
    """A session granted by ``peer_id``: where to connect and the keys to prove it.

    ``ips`` are tried in order (see :func:`data_channel_ips`).
    """

    peer_id: str
    ips: tuple[str, ...]
    port: int
    keys: SessionKeys


async def request_offer(
    host: IHost,
    peer_id: str,
    addrs: Sequence[str],
    *,
    timeout: float,
    ciphers: Sequence[Cipher] = DEFAULT_CIPHERS,
) -> DataOffer:
    """Ask ``peer_id`` for a data channel session over a libp2p stream."""
    try:
        with trio.fail_after(timeout):
            return await _request_offer(host, peer_id, addrs, timeout, tuple(ciphers))
    except trio.TooSlowError:
        raise DataChannelOpenError(f"{peer_id} made no data channel offer in time") from None
    except DataChannelOpenError:
        raise
    except Exception as exc:  # whatever failed, the caller falls back; the cause is kept
        raise DataChannelOpenError(f"no data channel offer from {peer_id}: {exc}") from exc


async def _request_offer(
    host: IHost, peer_id: str, addrs: Sequence[str], timeout: float, ciphers: tuple[Cipher, ...]
) -> DataOffer:
    request = Open(client_nonce=secrets.token_bytes(NONCE_SIZE), ciphers=ciphers)
    stream = await open_stream(host, peer_id, addrs, PROTOCOL_ID, timeout)
    try:
        ips = data_channel_ips(_remote_ip(stream), addrs)
        if not ips:
            raise DataChannelOpenError(f"no IP address known for {stream.peer_id}")
        await stream.send_all(encode_open(request))
        reply = decode_reply(await _receive_setup_frame(stream, "OFFER"))
    finally:
        with trio.move_on_after(FIN_GRACE):
            await stream.aclose()
    if isinstance(reply, Refuse):
        raise DataChannelRefusedError(reply.code, reply.reason)
    keys = client_keys(
        request, reply, client_peer=host.get_id().to_base58(), server_peer=stream.peer_id
    )
    return DataOffer(peer_id=stream.peer_id, ips=ips, port=reply.port, keys=keys)


def _remote_ip(stream: LibP2PStream) -> str | None:
    """The far end's IP of the libp2p connection, if the transport has one."""
    try:
        remote = stream.raw.get_remote_address()
    except Exception:  # noqa: BLE001 - transports without an address raise assorted types
        remote = None
    return str(remote[0]) if remote else None


def data_channel_ips(remote_ip: str | None, addrs: Sequence[str]) -> tuple[str, ...]:
    """Where to look for a peer's data port, best first.

    First the IP of the libp2p connection (the address we dialed, or the one the peer
    came from), then the IPs of the addresses the peer announces (``addrs``: from a
    ticket, a provider record or the peerstore).  A node behind NAT announces its
    public address (``[network] announce``) and forwards its fixed data port there;
    when it dialed us, the connection shows its NAT's outgoing address, which need
    not be the one that forwards the port.
    """
    ips = [] if remote_ip is None else [remote_ip]
    for addr in addrs:
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception:  # noqa: BLE001, S112 - multiaddr raises assorted types for bad input
            continue
        for proto in ("ip4", "ip6"):
            try:
                ip = str(maddr.value_for_protocol(proto))
            except Exception:  # noqa: BLE001, S112 - this address has no such component
                continue
            if ip not in ips and ip not in _UNSPECIFIED:
                ips.append(ip)
    return tuple(ips[:MAX_DATA_IPS])


async def _connect_first(ips: Sequence[str], port: int, deadline: float) -> trio.SocketStream:
    """A TCP connection to the first of ``ips`` that accepts one on ``port``.

    Each address gets an equal share of the time left, so one that drops packets
    cannot use it all.  Nothing is sent here: a wrong host costs no session.
    """
    failures: list[str] = []
    last: OSError | None = None
    for position, ip in enumerate(ips):
        # Past the deadline (the offer took all the time) every address gets none.
        share = max(0.0, deadline - trio.current_time()) / (len(ips) - position)
        with trio.move_on_after(share):
            try:
                return await trio.open_tcp_stream(ip, port)
            except OSError as exc:
                failures.append(f"{ip}: {exc.strerror or exc}")
                last = exc
                continue
        failures.append(f"{ip}: no answer in {share:.1f} s")
    raise DataChannelOpenError(
        f"no data connection on port {port}: {'; '.join(failures)}"
    ) from last


async def connect_offer(
    offer: DataOffer, *, timeout: float, idle_timeout: float | None = IDLE_TIMEOUT
) -> EncryptedStream:
    """Connect to ``offer`` and prove the session key; the authenticated stream."""
    try:
        with trio.fail_after(timeout):
            conn = await _connect_first(offer.ips, offer.port, trio.current_time() + timeout)
            try:
                channel = Channel(offer.keys, Role.CLIENT)
                await conn.send_all(channel.client_hello())
                hello = await _receive_exact(conn, SERVER_HELLO_SIZE, "handshake")
                channel.accept_server_hello(hello)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                raise
            return EncryptedStream(conn, channel, peer_id=offer.peer_id, idle_timeout=idle_timeout)
    except DataChannelOpenError:
        raise
    except trio.TooSlowError:
        raise DataChannelOpenError(
            f"the data connection to {offer.peer_id} port {offer.port} did not complete in time"
        ) from None
    except TruncatedStreamError as exc:
        raise DataChannelOpenError(
            f"{offer.peer_id} closed the data connection during the handshake"
            " (session unknown, used or expired, or the peer is busy)"
        ) from exc
    except (P2PShareError, OSError, trio.BrokenResourceError) as exc:
        raise DataChannelOpenError(
            f"no data connection to {offer.peer_id} port {offer.port}: {exc}"
        ) from exc


async def open_data_channel(
    host: IHost,
    peer_id: str,
    addrs: Sequence[str],
    *,
    offer_timeout: float,
    connect_timeout: float,
    ciphers: Sequence[Cipher] = DEFAULT_CIPHERS,
) -> EncryptedStream:
    """An encrypted data channel to ``peer_id``.

    Two budgets, one per way of failing: the offer comes over libp2p from a peer that
    may be busy, and gets ``offer_timeout``; the connection to the data port, which a
    firewall may drop without a word, gets ``connect_timeout`` after it.  One shared
    deadline made a busy peer's slow offer look like a missing data channel: in a
    crowd of 100 on one machine nearly every offer took 2-15 s, and each one that
    missed 5 s cost a libp2p stream at several times the CPU per byte.

    Raises DataChannelOpenError for every failure (the peer lacks the protocol,
    refuses, its port is closed or filtered, the handshake fails); the caller then
    opens the libp2p stream instead.
    """
    offer = await request_offer(host, peer_id, addrs, timeout=offer_timeout, ciphers=ciphers)
    return await connect_offer(offer, timeout=connect_timeout)
