"""Tickets: one copy-pasteable string naming a share and a peer that provides it.

Text form (docs/protocol.md, "Ticket")::

    "p2ps" + "1" + base32lower( payload + checksum )
    payload  = canonical msgpack [binary CID, peer ID multihash, [multiaddr string, ...]]
    checksum = BLAKE3(TICKET_CHECKSUM_DOMAIN + payload)[:4]

Only lower-case letters and digits, so a ticket needs no quoting in a shell or URL.
The checksum turns a mistyped or cut-off ticket into a clear error instead of a
search for content that does not exist.  Nothing in a ticket is trusted: the CID
checks the content, the libp2p handshake checks the peer ID, and the addresses are
mere hints.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from p2pshare.errors import LocalProtocolError, RemoteProtocolError
from p2pshare.proto.canonical import (
    decode_canonical,
    expect_bytes,
    expect_list,
    expect_str,
    pack,
    unpack,
)
from p2pshare.proto.cid import CID_BYTES, MULTIBASE_BASE32, MULTIBASE_BASE32_UPPER, ContentId
from p2pshare.proto.errors import MalformedReferenceError
from p2pshare.proto.multiformats import (
    b32decode,
    b32encode,
    b58decode,
    b58encode,
    decode_varint,
)

TICKET_PREFIX = "p2ps"
TICKET_VERSION = "1"
TICKET_CHECKSUM_DOMAIN = b"p2pshare-ticket-v1\0"
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
_CHECKSUM_SIZE = 4
# libp2p inlines keys of up to 42 bytes with the identity multihash (Ed25519 keys
# take 36) and hashes longer ones with sha2-256; nothing else is a peer ID.
_IDENTITY_MULTIHASH = 0x00
_SHA2_256_MULTIHASH = 0x12
_MAX_INLINE_KEY = 42
_MAX_PEER_ID_BYTES = 2 + _MAX_INLINE_KEY
_MAX_PAYLOAD = 64 + MAX_ADDRS * (MAX_ADDR_CHARS + 3) + _CHECKSUM_SIZE
MAX_TICKET_CHARS = len(TICKET_PREFIX) + 1 + -(-_MAX_PAYLOAD * 8 // 5)
_NOT_A_TICKET = "this is not a p2pshare ticket"
_DAMAGED = "this p2pshare ticket is damaged"
_COPY_AGAIN = "copy it again in full"


def _peer_id_bytes(peer_id: str) -> bytes:
    """The multihash behind a base58 peer ID; RemoteProtocolError if it is not one."""
    if len(peer_id) > 2 * _MAX_PEER_ID_BYTES:
        raise RemoteProtocolError("peer ID is too long")
    raw = b58decode(peer_id)
    _check_peer_id_bytes(raw)
    if b58encode(raw) != peer_id:
        raise RemoteProtocolError("peer ID is not canonical base58")
    return raw


def _check_peer_id_bytes(raw: bytes) -> None:
    code, pos = decode_varint(raw)
    length, pos = decode_varint(raw, pos)
    if len(raw) - pos != length:
        raise RemoteProtocolError("peer ID multihash has the wrong length")
    if code == _IDENTITY_MULTIHASH and 0 < length <= _MAX_INLINE_KEY:
        return
    if code == _SHA2_256_MULTIHASH and length == 32:
        return
    raise RemoteProtocolError("peer ID is neither an inlined key nor a sha2-256 multihash")


def _check_addr(addr: str) -> None:
    # Only what makes an address safe to carry and print; the network layer parses it.
    if not 1 < len(addr) <= MAX_ADDR_CHARS:
        raise RemoteProtocolError(f"multiaddr must have 2 to {MAX_ADDR_CHARS} characters")
    if not addr.startswith("/"):
        raise RemoteProtocolError(f"multiaddr {addr!r} does not start with '/'")
    if not all("!" <= char <= "~" for char in addr):
        raise RemoteProtocolError("multiaddr must be printable ASCII without spaces")


@dataclass(frozen=True)
class Ticket:
    """A content ID, the peer ID of a provider and that provider's addresses."""

    cid: ContentId
    peer_id: str
    addrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            _peer_id_bytes(self.peer_id)
            if len(self.addrs) > MAX_ADDRS:
                raise RemoteProtocolError(f"a ticket holds at most {MAX_ADDRS} addresses")
            for addr in self.addrs:
                _check_addr(addr)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"cannot make a ticket: {exc}") from exc

    def __str__(self) -> str:
        payload = pack([self.cid.to_bytes(), b58decode(self.peer_id), list(self.addrs)])
        return TICKET_PREFIX + TICKET_VERSION + b32encode(payload + _checksum(payload))

    @classmethod
    def parse(cls, text: str) -> Ticket:
        """Parse a pasted ticket; the error's ``str()`` is a sentence for the user."""
        if not text:
            raise MalformedReferenceError(f"{_NOT_A_TICKET}: it is empty")
        if not text.startswith(TICKET_PREFIX):
            raise MalformedReferenceError(
                f"{_NOT_A_TICKET}: tickets start with {TICKET_PREFIX + TICKET_VERSION!r}"
            )
        version = text[len(TICKET_PREFIX) : len(TICKET_PREFIX) + 1]
        if version != TICKET_VERSION:
            if version.isdigit():
                raise MalformedReferenceError(
                    f"this ticket has format {version}, but this p2pshare reads format "
                    f"{TICKET_VERSION}; upgrade p2pshare to use it"
                )
            raise MalformedReferenceError(
                f"{_NOT_A_TICKET}: tickets start with {TICKET_PREFIX + TICKET_VERSION!r}"
            )
        if len(text) > MAX_TICKET_CHARS:
            raise MalformedReferenceError(
                f"{_DAMAGED}: it has {len(text)} characters, more than any ticket; "
                "check that nothing was pasted after it"
            )
        try:
            raw = b32decode(text[len(TICKET_PREFIX) + 1 :])
        except RemoteProtocolError:
            raise MalformedReferenceError(
                f"{_DAMAGED}: it may only contain lower-case letters and the digits 2 to 7 "
                f"after {TICKET_PREFIX + TICKET_VERSION!r}; {_COPY_AGAIN}"
            ) from None
        payload, checksum = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
        if len(raw) <= _CHECKSUM_SIZE or _checksum(payload) != checksum:
            raise MalformedReferenceError(
                f"{_DAMAGED} or cut short (its checksum does not match); {_COPY_AGAIN}"
            )
        try:
            value = unpack(
                payload,
                what="ticket",
                max_size=_MAX_PAYLOAD,
                max_str_len=MAX_ADDR_CHARS,
                max_bin_len=_MAX_PEER_ID_BYTES,
                max_array_len=MAX_ADDRS,
                max_map_len=0,
            )
            return decode_canonical(
                payload, what="ticket", value=value, parse=_parse_payload, encode=_encode_payload
            )
        except RemoteProtocolError as exc:
            raise MalformedReferenceError(
                f"this p2pshare ticket is malformed ({exc}); ask its sender for a new one"
            ) from exc


def _checksum(payload: bytes) -> bytes:
    return blake3.blake3(TICKET_CHECKSUM_DOMAIN + payload).digest()[:_CHECKSUM_SIZE]


def _encode_payload(ticket: Ticket) -> bytes:
    return pack([ticket.cid.to_bytes(), b58decode(ticket.peer_id), list(ticket.addrs)])


def _parse_payload(value: object) -> Ticket:
    cid_value, peer_value, addrs_value = expect_list(value, what="ticket", length=3, max_len=3)
    cid = ContentId.from_bytes(
        expect_bytes(cid_value, what="ticket CID", length=CID_BYTES, max_len=CID_BYTES)
    )
    peer = expect_bytes(peer_value, what="ticket peer ID", max_len=_MAX_PEER_ID_BYTES)
    _check_peer_id_bytes(peer)
    addrs = tuple(
        expect_str(addr, what="ticket address")
        for addr in expect_list(addrs_value, what="ticket addresses", max_len=MAX_ADDRS)
    )
    for addr in addrs:
        _check_addr(addr)
    return Ticket(cid, b58encode(peer), addrs)


def parse_ticket(text: str) -> Ticket:
    return Ticket.parse(text)


def format_ticket(ticket: Ticket) -> str:
    return str(ticket)


def parse_content_ref(text: str) -> tuple[ContentId, Ticket | None]:
    """What ``p2pshare get`` accepts: a ticket, or a bare content ID (then no provider hint)."""
    if text.startswith(TICKET_PREFIX):
        ticket = Ticket.parse(text)
        return ticket.cid, ticket
    if text.startswith((MULTIBASE_BASE32, MULTIBASE_BASE32_UPPER, "Qm")):
        return ContentId.parse(text), None
    raise MalformedReferenceError(
        "this is neither a p2pshare content ID (starting with 'b') nor a ticket "
        f"(starting with {TICKET_PREFIX + TICKET_VERSION!r}); check what was pasted"
    )
