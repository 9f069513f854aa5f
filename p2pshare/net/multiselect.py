"""Protocol selection on a new stream with the first proposal sent behind the header.

py-libp2p's client writes the multistream header, waits for the listener's, then
writes the protocol it wants and waits for it to be echoed: two writes (each an
encrypted yamux frame) and two round trips for every stream it opens, and a DHT
query or a provider offer opens one each.  multistream-select lets the dialer send
its first proposal right behind the header (go-libp2p's client does); the listener
reads them in order, so a listener that lacks the protocol answers "na" and the
others are proposed one by one as before.  In a crowd's cProfile the negotiation of
streams was 14% of a downloader's CPU (docs/benchmarks.md).

py-libp2p's listener writes its header before it reads anything, then echoes the
protocol in a second write.  :class:`ReadFirstMultiselect` reads the dialer's header
first and holds its own back while more of the dialer's proposal is already in the
stream's buffer, so a pipelined dialer (this module's, go-libp2p's) gets the header
and the echo in one write.  A dialer that waits for the listener's header before it
proposes (py-libp2p's) finds nothing buffered and gets the header at once: every
dialer sends its header without waiting, so reading it first stalls none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    MultiselectError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import (
    DEFAULT_NEGOTIATE_TIMEOUT,
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    MultiselectClient,
)
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.utils.varint import encode_delim

if TYPE_CHECKING:
    from collections.abc import Sequence

    from libp2p.abc import IMultiselectCommunicator
    from libp2p.custom_types import StreamHandlerFn
    from libp2p.exceptions import BaseLibp2pError


class PipelinedMultiselectClient(MultiselectClient):
    """py-libp2p's client, but the header and the first protocol go out in one write."""

    async def select_one_of(
        self,
        protocols: Sequence[TProtocol],
        communicator: IMultiselectCommunicator,
        negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT,
    ) -> TProtocol:
        if not protocols or not isinstance(communicator, MultiselectCommunicator):
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        first, *others = protocols
        with trio.move_on_after(negotiate_timeout):
            await _write(communicator, [MULTISELECT_PROTOCOL_ID, str(first)], "handshake")
            header = await _read(communicator, "handshake")
            if header != MULTISELECT_PROTOCOL_ID:
                raise MultiselectClientError(
                    f"multiselect protocol ID mismatch: expected {MULTISELECT_PROTOCOL_ID}, "
                    f"got {header!r}"
                )
            answer = await _read(communicator, "protocol")
            if answer == str(first):
                return first
            if answer != PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(
                    f"unrecognized response: {answer!r}, expected {str(first)!r} "
                    f"or {PROTOCOL_NOT_FOUND_MSG!r}, protocol={first}"
                )
            for protocol in others:
                try:
                    return await self.try_select(communicator, protocol)
                except ProtocolNotSupportedError:
                    continue
            raise MultiselectClientError(f"protocols not supported: tried {list(protocols)}")
        raise MultiselectClientError(
            f"response timed out after {negotiate_timeout}s, protocols tried: {list(protocols)}"
        )


async def _read(
    communicator: IMultiselectCommunicator,
    what: str,
    error: type[BaseLibp2pError] = MultiselectClientError,
) -> str:
    """The next message; a failure is ``error`` (the dialer's or the listener's type)."""
    try:
        return await communicator.read()
    except MultiselectCommunicatorError as exc:
        raise error(f"{what} read failed: {exc}") from exc


async def _write(
    communicator: MultiselectCommunicator,
    messages: list[str],
    what: str,
    error: type[BaseLibp2pError] = MultiselectClientError,
) -> None:
    """``messages`` in one write; a failure is ``error``."""
    try:
        await communicator.read_writer.write(
            b"".join(encode_delim(message.encode()) for message in messages)
        )
    except (IOException, AssertionError, ValueError) as exc:
        raise error(f"{what} write failed: {exc}") from exc


class ReadFirstMultiselect(Multiselect):
    """py-libp2p's listener, but its header goes out with its first answer when the
    dialer proposed behind its own header."""

    async def negotiate(
        self,
        communicator: IMultiselectCommunicator,
        negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT,
    ) -> tuple[TProtocol | None, StreamHandlerFn | None]:
        if not isinstance(communicator, MultiselectCommunicator):
            return await super().negotiate(communicator, negotiate_timeout)
        unsent = [MULTISELECT_PROTOCOL_ID]
        with trio.move_on_after(negotiate_timeout):
            header = await _read(communicator, "handshake", MultiselectError)
            if header != MULTISELECT_PROTOCOL_ID:
                raise MultiselectError(f"multiselect protocol ID mismatch: got {header!r}")
            while True:
                if unsent and not _buffered(communicator):
                    await _write(communicator, unsent, "answer", MultiselectError)
                    unsent = []
                command = await _read(communicator, "command", MultiselectError)
                if command == "ls":
                    unsent.append("\n".join(str(p) for p in self.handlers if p is not None) + "\n")
                    continue
                protocol = TProtocol(command) if command else None
                if protocol in self.handlers:
                    await _write(communicator, [*unsent, command], "answer", MultiselectError)
                    return protocol, self.handlers[protocol]
                unsent.append(PROTOCOL_NOT_FOUND_MSG)
        raise MultiselectError("handshake read timeout")


def _buffered(communicator: MultiselectCommunicator) -> bool:
    """Whether more of the dialer's bytes already wait in the yamux stream's buffer."""
    muxed = getattr(communicator.read_writer, "muxed_stream", None)
    if not isinstance(muxed, YamuxStream):
        return False
    return bool(muxed.conn.stream_buffers.get(muxed.stream_id))
