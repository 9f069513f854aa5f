"""Addresses a router maps to this node (p2pshare.net.portmap), and what AutoNAT said of each.

A mapped address is a candidate: the router said it forwards the port, but a second NAT
in front of it (carrier-grade NAT) or a firewall may still keep everyone out. It is
announced (p2pshare.net.addrs) from the moment the mapping is made -- peers that try it
early lose nothing but a dial -- until an AutoNAT dial-back fails at it
(p2pshare.net.reachability): a refuted address is not announced again until a later
dial-back succeeds there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

CANDIDATE: Final = "candidate"
CONFIRMED: Final = "confirmed"
REFUTED: Final = "refuted"


class MappedAddrs:
    """The router-mapped addresses of one node, with their AutoNAT verdicts."""

    def __init__(self) -> None:
        self._verdicts: dict[str, str] = {}
        self._data_port: int | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the announced mapped addresses change."""
        self._listeners.append(listener)

    def set(self, addrs: Sequence[str], data_port: int | None = None) -> None:
        """The router now maps ``addrs`` (libp2p) and ``data_port`` (the data channel's
        external port, or None); verdicts on addresses still mapped are kept."""
        before = self.announced()
        self._verdicts = {a: self._verdicts.get(a, CANDIDATE) for a in addrs}
        self._data_port = data_port
        self._changed(before)

    def judge(self, addr: str, *, reachable: bool) -> None:
        """AutoNAT's verdict on ``addr`` (ignored for an address no longer mapped)."""
        if addr not in self._verdicts:
            return
        before = self.announced()
        self._verdicts[addr] = CONFIRMED if reachable else REFUTED
        self._changed(before)

    def _changed(self, before: list[str]) -> None:
        if self.announced() != before:
            for listener in self._listeners:
                listener()

    def all(self) -> list[str]:
        """Every mapped address, refuted ones too (AutoNAT asks again about them)."""
        return list(self._verdicts)

    def announced(self) -> list[str]:
        return [a for a, v in self._verdicts.items() if v != REFUTED]

    def verdicts(self) -> dict[str, str]:
        return dict(self._verdicts)

    def data_port(self) -> int | None:
        """The router's external port for the data channel, while a mapped address is
        announced (a refuted mapping forwards nothing either)."""
        return self._data_port if self.announced() else None
