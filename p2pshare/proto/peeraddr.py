"""Peer addresses as plain values: ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER_ID``,
or a peer reached through a relay, ``RELAY_ADDRESS/p2p-circuit/p2p/PEER_ID``.

Pure parsing, so that the CLI refuses a bad ``connect`` argument (exit 2) without
importing multiaddr: parsing one with it loads about 50 modules (netaddr, py-cid,
multihash, ...), ~30 ms warm and ~0.25 s before their bytecode is cached, against
~2 ms here.  The shape is the one the daemon dials (TCP only, see
p2pshare.net.peers.check_dialable), so a QUIC address is refused here too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from p2pshare.errors import RemoteProtocolError
from p2pshare.proto.multiformats import b58decode

EXAMPLE = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."
CIRCUIT = "p2p-circuit"
CIRCUIT_EXAMPLE = "/ip4/192.0.2.1/tcp/4001/p2p/RELAY_ID/p2p-circuit/p2p/PEER_ID"
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# Peer IDs are multihashes: identity (0x00) of a small public key, or sha2-256 (0x12).
_IDENTITY, _SHA2_256, _SHA2_256_LENGTH = 0x00, 0x12, 32
_MAX_INLINE_KEY = 42
# The longest base58 text of the longest such multihash (44 bytes), with room.
_MAX_PEER_ID_CHARS = 64
_PORT = re.compile(r"[0-9]{1,5}")
# Binary multiaddr codes (multicodec table): one-byte varints.
_IP4, _IP6, _TCP = 0x04, 0x29, 0x06
_IP_LENGTHS = {_IP4: 4, _IP6: 16}


@dataclass(frozen=True)
class PeerAddr:
    """One dialable peer address; ``host`` is an IP address or a DNS name.

    For a relay circuit, ``relay`` is the relay's peer ID and the protocol, host and
    port are the relay's.
    """

    protocol: str
    host: str
    port: int
    peer_id: str
    relay: str | None = None


def check_peer_id(text: str) -> None:
    """ValueError unless ``text`` is a base58 libp2p peer ID (any key type)."""
    if len(text) > _MAX_PEER_ID_CHARS:
        raise ValueError(f"{text[:_MAX_PEER_ID_CHARS]!r}... is too long for a peer ID")
    try:
        raw = b58decode(text)
    except RemoteProtocolError:
        raise ValueError(f"{text!r} is not a base58 peer ID") from None
    if len(raw) < 2 or raw[1] != len(raw) - 2:
        raise ValueError(f"{text!r} is not a peer ID (not a multihash)")
    code, length = raw[0], raw[1]
    if not (
        (code == _IDENTITY and length <= _MAX_INLINE_KEY)
        or (code == _SHA2_256 and length == _SHA2_256_LENGTH)
    ):
        raise ValueError(f"{text!r} is not a peer ID (not an identity or sha2-256 multihash)")


def _host(protocol: str, value: str) -> str:
    if protocol.startswith("dns"):
        if not _DNS_NAME.fullmatch(value):
            raise ValueError(f"has {value!r}, which is not a DNS name")
        return value
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"has {value!r}, which is not an IP address") from None
    if (protocol == "ip4") != (ip.version == 4):
        raise ValueError(f"has {value!r}, which is not an /{protocol} address")
    if ip.is_unspecified:
        # Dialing 0.0.0.0 reaches this machine, so it seemed to work when both nodes run
        # here, and the address then went to peers that reach themselves with it.
        raise ValueError(
            f"has the unspecified address {ip}, which names no node; use an address "
            "that `p2pshare id` prints on that node"
        )
    return str(ip)


def parse_peer_addr(text: str) -> PeerAddr:
    """``text`` as plain values; ValueError says what is wrong, for "'TEXT' " to precede."""
    parts = text.split("/")
    # Not before the third part: a DNS name may be spelt "p2p-circuit".
    if CIRCUIT in parts[3:]:
        at = parts.index(CIRCUIT, 3)
        target = parts[at + 1 :]
        if len(target) != 2 or target[0] != "p2p":
            raise ValueError(
                f"does not end in /{CIRCUIT}/p2p/<peer ID>; a peer behind a relay looks like "
                f"{CIRCUIT_EXAMPLE}"
            )
        relay = _parse_direct("/".join(parts[:at]))
        peer_id = target[1]
        check_peer_id(peer_id)
        if peer_id == relay.peer_id:
            raise ValueError("names the same peer as relay and as target")
        return PeerAddr(relay.protocol, relay.host, relay.port, peer_id, relay.peer_id)
    return _parse_direct(text)


def _parse_direct(text: str) -> PeerAddr:
    parts = text.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] not in _HOST_PROTOCOLS:
        raise ValueError(f"is not a peer address like {EXAMPLE}")
    protocol, host = parts[1], _host(parts[1], parts[2])
    rest = parts[3:]
    if rest and rest[-2:-1] == ["p2p"]:
        peer_id, rest = rest[-1], rest[:-2]
    elif rest and rest[-1] == "p2p":
        raise ValueError(f"ends in /p2p/ without a peer ID; a peer address looks like {EXAMPLE}")
    else:
        raise ValueError(f"does not end in /p2p/<peer ID>; a peer address looks like {EXAMPLE}")
    if not rest or rest[0] != "tcp":
        transport = "/".join(rest) or "none"
        raise ValueError(f"uses transport {transport!r}; p2pshare dials TCP only (/tcp/PORT)")
    if len(rest) != 2 or not _PORT.fullmatch(rest[1]) or not 0 < int(rest[1]) <= 65535:
        raise ValueError("does not have /tcp/PORT with a port from 1 to 65535 before /p2p/")
    check_peer_id(peer_id)
    return PeerAddr(protocol, host, int(rest[1]), peer_id)


def leading_ip_port(
    raw: bytes,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, int | None]:
    """The IP address a binary multiaddr starts with, and the TCP port right after it.

    Read from the bytes: py-multiaddr's text form base58-encodes the peer ID, about
    0.7 ms an address, and the peer store checks every address it learns (a crowd's
    downloaders spent 5% of their CPU there).  Anything else gives None.
    """
    length = _IP_LENGTHS.get(raw[0]) if raw else None
    if length is None or len(raw) < 1 + length:
        return None, None
    ip = ipaddress.ip_address(raw[1 : 1 + length])
    port_at = 1 + length
    if raw[port_at : port_at + 1] != bytes([_TCP]) or len(raw) < port_at + 3:
        return ip, None
    return ip, int.from_bytes(raw[port_at + 1 : port_at + 3], "big")
