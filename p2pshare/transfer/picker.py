"""Which chunk to ask which peer for next: rarest first, then endgame.

Pure bookkeeping, no I/O, so every rule is tested directly:

* a chunk is asked from at most one peer until every missing chunk is in flight;
* among chunks a peer holds, the one held by the fewest peers goes first; ties go to
  the first in turn from ``start``, wrapping around at the end.  Each download starts
  at its own chunk (setup.py draws it), so downloaders that know only the seeder ask it
  for different chunks and then have something to give each other; in turn, the
  file's writes and reads stay mostly sequential;
* endgame: once every missing chunk is in flight, idle peers duplicate chunks still
  in flight elsewhere (at most ``MAX_DUPLICATES`` copies), so one slow peer cannot
  hold back the end of a download.  Not before: in a crowd most peers are partial and
  hold only chunks others are already fetching, so duplicating whenever a peer had
  nothing fresh went on all through a download, not only at its end;
* a peer that leaves or fails gives its chunks back;
* a partial peer's chunk list may be replaced as it grows, without losing its requests;
* a peer found with nothing to ask for is not searched again until a chunk goes back,
  a chunk list changes or endgame begins: only those give it something new.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from p2pshare.proto.bitfield import Bitfield

MAX_DUPLICATES = 2
# How many missing chunks past the cursor a pick looks at for a rarer one: bounds the
# work of one pick on a share of a million chunks.
SCAN_WINDOW = 4096


class Picker:
    def __init__(self, verified: Bitfield, batch: int = 1, start: int = 0) -> None:
        self._verified = verified
        self._batch = max(1, batch)
        self._start = start % max(1, len(verified))
        self._haves: dict[str, Bitfield] = {}
        self._availability: defaultdict[int, int] = defaultdict(int)
        self._in_flight: defaultdict[int, set[str]] = defaultdict(set)
        self._by_peer: defaultdict[str, set[int]] = defaultdict(set)
        # The first chunk in turn not yet verified, before and from ``start``.
        self._cursor = 0
        self._ahead = self._start
        # Bumped by every change that can give a peer something to ask for; a peer's
        # fetch loops all wake at each chunk stored, and a partial provider holding
        # nothing new would have each of them search every missing chunk again.
        self._freed = 0
        self._nothing_for: dict[str, int] = {}

    @property
    def verified(self) -> Bitfield:
        """Chunks received and verified (written by the caller before its next await)."""
        return self._verified

    @property
    def done(self) -> bool:
        return self._verified.complete

    @property
    def peers(self) -> list[str]:
        return list(self._haves)

    def in_flight(self, peer: str) -> set[int]:
        return set(self._by_peer.get(peer, ()))

    def add_peer(self, peer: str, have: Bitfield) -> None:
        if peer in self._haves:
            self.remove_peer(peer)
        self._freed += 1
        self._haves[peer] = have
        for index in have.iter_set():
            self._availability[index] += 1

    def have(self, peer: str) -> Bitfield | None:
        """What ``peer`` last said it holds; None for a peer not (or no longer) added."""
        return self._haves.get(peer)

    def update_have(self, peer: str, have: Bitfield) -> None:
        """``peer`` holds ``have`` now (a partial provider's grows); what it has in flight
        stays assigned to it.  Only the bits that changed are counted again."""
        old = self._haves.get(peer)
        if old is None:
            return
        self._freed += 1
        self._haves[peer] = have
        for index in have.difference(old).iter_set():
            self._availability[index] += 1
        for index in old.difference(have).iter_set():
            self._availability[index] -= 1

    def remove_peer(self, peer: str) -> None:
        self._freed += 1
        self._nothing_for.pop(peer, None)
        have = self._haves.pop(peer, None)
        if have is not None:
            for index in have.iter_set():
                self._availability[index] -= 1
        for index in self._by_peer.pop(peer, set()):
            self._in_flight[index].discard(peer)
            if not self._in_flight[index]:
                del self._in_flight[index]

    def holders(self, index: int) -> int:
        return self._availability.get(index, 0)

    def next_request(self, peer: str) -> range | None:
        """The next run of chunks to ask ``peer`` for, now marked in flight; None if none."""
        have = self._haves.get(peer)
        if have is None or self.done or self._nothing_for.get(peer) == self._freed:
            return None
        first = self._pick_fresh(peer, have)
        if first is None:
            first = self._pick_endgame(peer, have)
            if first is None:
                self._nothing_for[peer] = self._freed
                return None
            self._assign(peer, first)
            return range(first, first + 1)
        last = first
        while (
            last + 1 - first < self._batch
            and last + 1 < len(self._verified)
            and self._is_free(last + 1, have)
        ):
            last += 1
        for index in range(first, last + 1):
            self._assign(peer, index)
        return range(first, last + 1)

    def _is_free(self, index: int, have: Bitfield) -> bool:
        return not self._verified[index] and index not in self._in_flight and have[index]

    def _missing_in_turn(self) -> Iterator[int]:
        """Missing chunks from ``start`` to the end, then from the first to ``start``."""
        verified, size = self._verified, len(self._verified)
        while self._ahead < size and verified[self._ahead]:
            self._ahead += 1
        while self._cursor < self._start and verified[self._cursor]:
            self._cursor += 1
        yield from verified.iter_missing(self._ahead)
        for index in verified.iter_missing(self._cursor):
            if index >= self._start:
                return
            yield index

    def _pick_fresh(self, peer: str, have: Bitfield) -> int | None:
        best: int | None = None
        best_rarity = 0
        scanned = 0
        for index in self._missing_in_turn():
            if scanned >= SCAN_WINDOW and best is not None:
                break
            scanned += 1
            if index in self._in_flight or not have[index]:
                continue
            rarity = self._availability[index]
            if best is None or rarity < best_rarity:
                best, best_rarity = index, rarity
                if rarity <= 1:
                    break
        return best

    def _missing(self) -> int:
        return len(self._verified) - self._verified.count()

    def _pick_endgame(self, peer: str, have: Bitfield) -> int | None:
        if len(self._in_flight) < self._missing():
            return None
        candidates = [
            index
            for index, holders in self._in_flight.items()
            if peer not in holders and len(holders) < MAX_DUPLICATES and have[index]
        ]
        return min(candidates, key=lambda i: (len(self._in_flight[i]), i), default=None)

    def _assign(self, peer: str, index: int) -> None:
        fresh = index not in self._in_flight
        self._in_flight[index].add(peer)
        self._by_peer[peer].add(index)
        if fresh and len(self._in_flight) == self._missing():
            self._freed += 1  # endgame begins: peers with nothing fresh may duplicate now

    def release(self, peer: str, index: int) -> None:
        """``peer`` will not deliver ``index`` (cancelled, failed, or a duplicate)."""
        self._freed += 1
        holders = self._in_flight.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._in_flight[index]
        self._by_peer[peer].discard(index)

    def received(self, peer: str, index: int) -> tuple[bool, set[str]]:
        """A verified chunk arrived from ``peer``.

        Returns whether it was new, and the other peers still fetching it (endgame
        duplicates the caller may cancel).
        """
        others = self._in_flight.pop(index, set()) - {peer}
        self._by_peer[peer].discard(index)
        for other in others:
            self._by_peer[other].discard(index)
        if self._verified[index]:
            return False, others
        self._verified.set(index)
        return True, others
