"""Signed peer records from DHT answers: verified once each, never trusted unverified."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.envelope import consume_envelope, seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.peer.peerstore import PeerStore
from multiaddr import Multiaddr

from p2pshare.net import records
from p2pshare.net.records import RESTORE_AFTER, VerifiedRecords

if TYPE_CHECKING:
    from libp2p.abc import IHost


class _Host:
    def __init__(self) -> None:
        self.peerstore = PeerStore()

    def get_peerstore(self) -> PeerStore:
        return self.peerstore


def signed_record(addr: str = "/ip4/192.0.2.1/tcp/4001") -> tuple[ID, bytes]:
    keys = create_new_key_pair()
    peer = ID.from_pubkey(keys.public_key)
    envelope = seal_record(PeerRecord(peer, [Multiaddr(addr)], 1), keys.private_key)
    return peer, envelope.marshal_envelope()


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The envelopes whose signature was checked, in order."""
    checked: list[bytes] = []

    def counting(raw: bytes, domain: str) -> object:
        checked.append(raw)
        return consume_envelope(raw, domain)

    monkeypatch.setattr(records, "consume_envelope", counting)
    return checked


def test_a_record_seen_again_is_not_verified_again(verified: list[bytes]) -> None:
    host = _Host()
    cache = VerifiedRecords()
    peer, raw = signed_record()
    for _ in range(5):
        assert cache.consume(cast("IHost", host), raw, peer)
    assert verified == [raw]
    assert [str(a) for a in host.peerstore.addrs(peer)] == ["/ip4/192.0.2.1/tcp/4001"]


def test_a_forged_record_is_refused_however_often_a_true_one_was_seen(
    verified: list[bytes],
) -> None:
    host = cast("IHost", _Host())
    cache = VerifiedRecords()
    peer, raw = signed_record()
    assert cache.consume(host, raw, peer)
    for i in range(0, len(raw), 7):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        assert not cache.consume(host, bytes(flipped), peer)
    assert cache.consume(host, raw, peer)
    assert len(verified) == 1 + len(range(0, len(raw), 7))


def test_a_record_of_another_peer_is_refused_also_from_the_cache() -> None:
    host = cast("IHost", _Host())
    cache = VerifiedRecords()
    peer, raw = signed_record()
    other, _ = signed_record()
    assert not cache.consume(host, raw, other)
    assert cache.consume(host, raw, peer)
    assert not cache.consume(host, raw, other)
    assert cache.consume(host, raw)


def test_the_peer_store_is_given_a_record_again_once_its_copy_is_old(
    verified: list[bytes],
) -> None:
    host = _Host()
    now = [0.0]
    cache = VerifiedRecords(clock=lambda: now[0])
    peer, raw = signed_record()
    assert cache.consume(cast("IHost", host), raw, peer)
    host.peerstore.clear_addrs(peer)
    now[0] += RESTORE_AFTER - 1
    assert cache.consume(cast("IHost", host), raw, peer)
    assert host.peerstore.addrs(peer) == []
    now[0] += 1
    assert cache.consume(cast("IHost", host), raw, peer)
    assert [str(a) for a in host.peerstore.addrs(peer)] == ["/ip4/192.0.2.1/tcp/4001"]
    assert verified == [raw]


def test_the_cache_keeps_the_most_recently_seen(verified: list[bytes]) -> None:
    host = cast("IHost", _Host())
    cache = VerifiedRecords(size=2)
    (a, raw_a), (b, raw_b), (c, raw_c) = signed_record(), signed_record(), signed_record()
    for peer, raw in ((a, raw_a), (b, raw_b), (a, raw_a), (c, raw_c), (a, raw_a), (b, raw_b)):
        assert cache.consume(host, raw, peer)
    assert verified == [raw_a, raw_b, raw_c, raw_b]
