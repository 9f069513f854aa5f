"""The CLI's pure peer-address parser agrees with multiaddr and libp2p where it accepts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from p2pshare.proto.keys import peer_id_from_public_key
from p2pshare.proto.multiformats import b58encode
from p2pshare.proto.peeraddr import PeerAddr, check_peer_id, leading_ip_port, parse_peer_addr

if TYPE_CHECKING:
    import ipaddress

ED25519_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
RSA_ID = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"

peer_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(peer_id_from_public_key),
    st.binary(min_size=32, max_size=32).map(lambda digest: b58encode(b"\x12\x20" + digest)),
)
hosts = st.one_of(
    # 0.0.0.0 and :: name no node: refused (tested below).
    st.ip_addresses(v=4).filter(lambda ip: not ip.is_unspecified).map(lambda ip: ("ip4", str(ip))),
    st.ip_addresses(v=6).filter(lambda ip: not ip.is_unspecified).map(lambda ip: ("ip6", str(ip))),
    # DNS labels: letters, digits and inner hyphens (a label never ends in one).
    st.from_regex(
        r"[a-z]([a-z0-9-]{0,19}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,19}[a-z0-9])?){0,3}", fullmatch=True
    ).map(lambda name: ("dns4", name)),
)


@given(hosts, st.integers(1, 65535), peer_ids)
def test_every_dialable_peer_address_parses_as_multiaddr_reads_it(
    host: tuple[str, str], port: int, peer_id: str
) -> None:
    protocol, name = host
    text = f"/{protocol}/{name}/tcp/{port}/p2p/{peer_id}"
    assert parse_peer_addr(text) == PeerAddr(protocol, name, port, peer_id)
    parsed = Multiaddr(text)
    assert [p.name for p in parsed.protocols()] == [protocol, "tcp", "p2p"]
    assert parsed.value_for_protocol("p2p") == peer_id
    assert ID.from_base58(peer_id).to_base58() == peer_id


@given(st.text(max_size=120))
def test_any_text_is_parsed_or_refused_with_a_value_error(text: str) -> None:
    try:
        addr = parse_peer_addr(text)
    except ValueError:
        return
    Multiaddr(text)  # what the CLI accepts, the daemon's parser accepts too
    assert 0 < addr.port <= 65535


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("garbage", "is not a peer address"),
        ("/ip4/192.0.2.1/tcp/4001", "does not end in /p2p/<peer ID>"),
        (f"/ip4/192.0.2.1/udp/4001/quic-v1/p2p/{ED25519_ID}", "dials TCP only"),
        (f"/ip4/192.0.2.1/tcp/0/p2p/{ED25519_ID}", "port from 1 to 65535"),
        (f"/ip4/192.0.2.1/tcp/٤٠٠١/p2p/{ED25519_ID}", "port from 1 to 65535"),
        (f"/ip4/::1/tcp/4001/p2p/{ED25519_ID}", "not an /ip4 address"),
        (f"/ip4/192.0.2.300/tcp/4001/p2p/{ED25519_ID}", "not an IP address"),
        (f"/dns4/-bad-/tcp/4001/p2p/{ED25519_ID}", "not a DNS name"),
        ("/ip4/192.0.2.1/tcp/4001/p2p/nope", "is not a peer ID"),
        ("/ip4/192.0.2.1/tcp/4001/p2p/0OIl", "not a base58 peer ID"),
        ("/ip4/192.0.2.1/tcp/4001/p2p/" + "z" * 500, "too long for a peer ID"),
        (f"/ip4/0.0.0.0/tcp/4001/p2p/{ED25519_ID}", "unspecified address 0.0.0.0"),
        (f"/ip6/::/tcp/4001/p2p/{ED25519_ID}", "unspecified address ::"),
        (f"/ip6/0:0::0/tcp/4001/p2p/{ED25519_ID}", "unspecified address ::"),
        (f"/ip4/192.0.2.1/tcp/4001/p2p/{RSA_ID}/p2p-circuit", "/p2p-circuit/p2p/<peer ID>"),
        (f"/ip4/192.0.2.1/tcp/4001/p2p-circuit/p2p/{ED25519_ID}", "does not end in /p2p/"),
        (f"/ip4/0.0.0.0/tcp/4001/p2p/{RSA_ID}/p2p-circuit/p2p/{ED25519_ID}", "unspecified"),
        (f"/ip4/192.0.2.1/tcp/4001/p2p/{RSA_ID}/p2p-circuit/p2p/nope", "is not a peer ID"),
        (f"/ip4/192.0.2.1/tcp/4001/p2p/{RSA_ID}/p2p-circuit/p2p/{RSA_ID}", "same peer"),
    ],
)
def test_a_bad_peer_address_is_refused_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_peer_addr(text)


@pytest.mark.parametrize("peer_id", [ED25519_ID, RSA_ID])
def test_peer_ids_of_any_key_type_are_accepted(peer_id: str) -> None:
    check_peer_id(peer_id)
    assert parse_peer_addr(f"/ip6/::1/tcp/4001/p2p/{peer_id}").host == "::1"


@given(hosts, st.integers(1, 65535), peer_ids, peer_ids)
def test_a_peer_behind_a_relay_parses_to_the_relay_and_the_target(
    host: tuple[str, str], port: int, relay: str, target: str
) -> None:
    protocol, name = host
    text = f"/{protocol}/{name}/tcp/{port}/p2p/{relay}/p2p-circuit/p2p/{target}"
    if relay == target:
        return
    assert parse_peer_addr(text) == PeerAddr(protocol, name, port, target, relay)
    assert Multiaddr(text).value_for_protocol("p2p") == relay


def test_a_dns_name_spelt_like_the_circuit_protocol_is_a_name() -> None:
    text = f"/dns4/p2p-circuit/tcp/4001/p2p/{ED25519_ID}"
    assert parse_peer_addr(text) == PeerAddr("dns4", "p2p-circuit", 4001, ED25519_ID)


@given(st.ip_addresses(), st.integers(0, 65535), peer_ids)
def test_the_leading_ip_and_port_are_read_from_the_bytes_as_multiaddr_writes_them(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, peer_id: str
) -> None:
    family = "ip4" if ip.version == 4 else "ip6"
    with_tcp = Multiaddr(f"/{family}/{ip}/tcp/{port}/p2p/{peer_id}")
    assert leading_ip_port(with_tcp.to_bytes()) == (ip, port)
    assert leading_ip_port(Multiaddr(f"/{family}/{ip}/udp/{port}").to_bytes()) == (ip, None)
    assert leading_ip_port(Multiaddr(f"/dns4/example.org/tcp/{port}").to_bytes()) == (None, None)


@given(st.binary(max_size=40))
def test_any_bytes_give_an_address_and_port_or_none(raw: bytes) -> None:
    ip, port = leading_ip_port(raw)
    assert ip is not None or port is None
