from __future__ import annotations

import multiaddr

from p2pshare.net.addrs import announce_addrs


class FakeHost:
    def get_transport_addrs(self) -> list[multiaddr.Multiaddr]:
        return [
            multiaddr.Multiaddr(a)
            for a in ("/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001", "/ip4/127.0.0.1/tcp/5")
        ]


def test_unspecified_addresses_are_never_announced() -> None:
    announced = [str(a) for a in announce_addrs(FakeHost(), [])]  # type: ignore[arg-type]
    assert "/ip4/127.0.0.1/tcp/5" in announced
    assert all("/0.0.0.0/" not in a and "/::/" not in a for a in announced)
    assert any(a.endswith("/tcp/4001") for a in announced), "0.0.0.0 became interface addresses"


def test_configured_addresses_win() -> None:
    announced = announce_addrs(FakeHost(), ["/ip4/192.0.2.7/tcp/4001"])  # type: ignore[arg-type]
    assert [str(a) for a in announced] == ["/ip4/192.0.2.7/tcp/4001"]
