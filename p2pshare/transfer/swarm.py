"""Which providers a download uses, when it dials them again, looks for more or gives up.

Pure policy beside :class:`~p2pshare.transfer.picker.Picker` (which chunk to ask
which peer for): no trio, no sockets, and the time is passed in, so every rule is
tested on sequences of events (tests/transfer/test_swarm.py).  The download's trio
shell (transfer/downloader.py) tells it what happened and does what it decides:

* a provider whose stream broke, stalled or failed a request is dialed again after
  ``REATTACH_DELAYS`` (one per failure in a row; a stream that brought a verified
  chunk starts the count over), and given up after the last;
* a provider that lied (a forged manifest or hash page, a bad chunk) is banned, and
  one that refused the content is given up: neither is ever dialed again;
* providers are looked up every ``LOOKUP_INTERVAL`` while there is room for more
  (``MAX_PROVIDERS``), and at once when no link is left or no provider could send a
  missing chunk; of more than there is room for, the hinted ones and then a random
  draw get a link;
* the download fails only once no provider that could send a missing chunk has
  been left, or found, for ``CONNECT_TIMEOUT`` and no lookup is under way;
* a partial provider's chunk list is asked again while nothing is in flight with it;
* the download announces itself as a partial provider only once it would not finish
  before the next lookup (``slow``).

The retries of a whole download (after it failed) belong to node/downloads.py.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pshare.transfer import failures

if TYPE_CHECKING:
    from collections.abc import Iterable

    from p2pshare.transfer.picker import Picker

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 15.0
# Delays before dialing a provider again after its stream broke or stalled, one per
# failure in a row: an overloaded seeder gets time to recover, and a peer that is
# gone costs a few dials.  A stream that then brings a verified chunk starts over.
REATTACH_DELAYS = (1.0, 4.0, 10.0)
# Downloaders announce their partial content as they go: a running download asks the
# lookup again this often, so load spreads over them instead of staying on the seeder.
LOOKUP_INTERVAL = 15.0
# Running for less than this, a download's rate says too little to judge it by.
ANNOUNCE_JUDGED_AFTER = 2.0
# Providers linked, being dialed or waiting to be dialed again, at most.
MAX_PROVIDERS = 32
# A partial provider verifies more chunks as it downloads: its chunk list is asked
# again this often, while we have nothing in flight with it (one small request).
HAVE_REFRESH_S = 5.0


@dataclass(frozen=True)
class Source:
    """A provider to download from."""

    peer_id: str
    addrs: tuple[str, ...] = ()


class Tick(enum.Enum):
    """What the download does after a look at its providers."""

    WAIT = enum.auto()
    LOOK_UP = enum.auto()
    FAIL = enum.auto()


def slow(*, missing: int, fetched: int, elapsed: float) -> bool:
    """Whether a download, at its rate so far, would still run at the next lookup.

    ``missing``: chunks still to get, ``fetched``: chunks verified since the transfer
    started ``elapsed`` seconds ago.  Others find a partial provider by a lookup, every
    ``LOOKUP_INTERVAL``: a slow download holding chunks is worth finding while partial.
    A fast one would be found too late to help, and its announcement would cost a DHT
    provide and the connections of those who find it for nothing (a crowd of 30 on one
    machine: docs/benchmarks.md); complete, it is announced anyway.
    """
    if missing == 0 or elapsed < ANNOUNCE_JUDGED_AFTER:
        return False
    if elapsed >= LOOKUP_INTERVAL or fetched == 0:
        return True
    return missing * elapsed / fetched >= LOOKUP_INTERVAL


class Refresh(enum.Enum):
    """What to do, every ``HAVE_REFRESH_S``, about a partial provider's chunk list."""

    ASK = enum.auto()
    SKIP = enum.auto()
    STOP = enum.auto()


class Swarm:
    """Every provider of one download and what is known of it."""

    def __init__(self, hints: Iterable[Source] = (), rng: random.Random | None = None) -> None:
        self.hints = {s.peer_id: s for s in hints}
        self._rng = rng or random.SystemRandom()
        # Every provider seen, with the addresses it was last seen with.
        self.sources: dict[str, Source] = {}
        # Providers with a task of their own: linked, being dialed or waiting to be.
        self.active: set[str] = set()
        # Providers that refused the content or failed too often: never asked again.
        self.given_up: set[str] = set()
        # Providers that lied, in the order they were caught: never asked again.
        self.banned: list[str] = []
        # Providers asked for the manifest that did not send it: not asked again.
        self.no_manifest: set[str] = set()
        # Why each provider could not help, last reason first (a failures.* phrase).
        self.why: dict[str, str] = {}
        self._in_a_row: dict[str, int] = {}
        # Whether the setup ran the first lookup (else the transfer runs it at once).
        self.looked_up = False
        self.looking = False
        self._lookup_wanted = False
        self._next_lookup = 0.0
        self._alone_since: float | None = None

    def excluded(self, peer: str) -> bool:
        return peer in self.given_up or peer in self.banned

    # -- before the transfer: finding one provider that sends the manifest

    def on_first_lookup(self, found: Iterable[Source]) -> list[Source]:
        """Providers worth dialing for the manifest, from a lookup's result."""
        self.looked_up = True
        fresh: dict[str, Source] = {}
        for source in found:
            fresh.setdefault(source.peer_id, source)
        for peer in (*self.given_up, *self.banned, *self.no_manifest):
            fresh.pop(peer, None)
        self.sources.update(fresh)
        return self._spread(fresh.values())

    def on_unreachable(self, peer: str) -> None:
        self.why[peer] = failures.UNREACHABLE

    def on_drop(
        self, peer: str, why: str, *, ban: bool = False, refused: bool = False, last: bool = False
    ) -> None:
        """``peer`` could not help (``why``, a failures.* phrase); ``last``: it had the
        download's last link."""
        if self.why.get(peer) not in (failures.FORGED, failures.BAD_CHUNK):
            self.why[peer] = why
        # A bad chunk may be found after its sender was dropped for another reason.
        if ban and peer not in self.banned:
            self.banned.append(peer)
        if refused:
            self.given_up.add(peer)
        if last:
            self._lookup_wanted = True

    # -- during the transfer

    def start_transfer(self, now: float) -> None:
        # The setup either just looked (a link lost since needs no second lookup yet)
        # or left the first lookup to the transfer, which runs it at once.
        self._lookup_wanted = not self.looked_up
        self._next_lookup = now + LOOKUP_INTERVAL

    def keep(self, peer: str) -> None:
        """``peer`` gets a task of its own, which ends with :meth:`on_gone`."""
        self.active.add(peer)
        self._in_a_row[peer] = 0

    def after_link(self, peer: str, *, served: bool, done: bool) -> float | None:
        """``peer``'s link ended (or could not be made): the delay before dialing it
        again, or None to let it go.  ``served``: it brought a verified chunk."""
        if served:
            self._in_a_row[peer] = 0
        if done or self.excluded(peer):
            return None
        in_a_row = self._in_a_row.get(peer, 0)
        if in_a_row == len(REATTACH_DELAYS):
            log.info("giving up on provider %s: %d failures in a row", peer, in_a_row)
            self.given_up.add(peer)
            return None
        self._in_a_row[peer] = in_a_row + 1
        return REATTACH_DELAYS[in_a_row]

    def on_gone(self, peer: str) -> None:
        self.active.discard(peer)

    def lookup_due(self, now: float) -> float | None:
        """None when a lookup should start now, else how long until one is due.

        A periodic lookup waits while every provider slot is taken: nothing it found
        could get a link (``on_found``), and in a crowd each one costs GET_PROVIDERS
        at several nodes.  It runs once a slot frees (the caller asks again on any
        change), and a lookup wanted now (no link left, no provider could send a
        missing chunk) runs regardless.
        """
        if self.looking:
            return LOOKUP_INTERVAL
        if self._lookup_wanted:
            return None
        if len(self.active) >= MAX_PROVIDERS:
            return max(self._next_lookup - now, LOOKUP_INTERVAL)
        if now >= self._next_lookup:
            return None
        return self._next_lookup - now

    def on_lookup_start(self) -> None:
        self._lookup_wanted = False
        self.looking = True

    def on_lookup_end(self, now: float) -> None:
        self.looking = False
        self._next_lookup = now + LOOKUP_INTERVAL

    def on_found(self, found: Iterable[Source]) -> list[Source]:
        """What a lookup during the transfer found: the new providers to dial."""
        new = []
        for source in self._spread(found):
            peer = source.peer_id
            if self.excluded(peer):
                continue
            if peer in self.active:
                self.sources[peer] = source
            elif len(self.active) < MAX_PROVIDERS:
                self.sources[peer] = source
                self.keep(peer)
                new.append(source)
        return new

    def _spread(self, found: Iterable[Source]) -> list[Source]:
        """``found`` with the hinted providers first, the others in random order.

        A lookup returns the same providers in the same order to everyone, the earliest
        to announce first: a crowd that linked to the first ``MAX_PROVIDERS`` of them
        piled onto those, each dialed by nearly the whole crowd (bench/downloaders.py:
        of a capped crowd of 100, 46-55 sent chunks to the others at all).
        """
        sources = list(found)
        hinted = [s for s in sources if s.peer_id in self.hints]
        others = [s for s in sources if s.peer_id not in self.hints]
        self._rng.shuffle(others)
        return hinted + others

    def hopeful(self, picker: Picker) -> bool:
        """Whether a provider may still send a missing chunk: one being dialed, waiting to
        be dialed again or asked for its chunk list, or holding a chunk we lack.  A
        provider holding none (a seeder whose file went stale) does not keep the
        download waiting; a partial one that grows counts again once it says so."""
        verified = picker.verified
        for peer in self.active:
            have = picker.have(peer)
            if have is None or have.complete or have.difference(verified).count():
                return True
        return False

    def on_tick(self, now: float, picker: Picker, *, storing: int) -> Tick:
        """The give-up rule, looked at whenever something changed (and every second)."""
        if storing or self.hopeful(picker):
            self._alone_since = None
            return Tick.WAIT
        if self._alone_since is None:
            self._alone_since = now
            self._lookup_wanted = True
            return Tick.LOOK_UP
        if not self.looking and now - self._alone_since >= CONNECT_TIMEOUT:
            return Tick.FAIL
        return Tick.WAIT

    @staticmethod
    def refresh(peer: str, picker: Picker) -> Refresh:
        have = picker.have(peer)
        if have is None or have.complete:
            return Refresh.STOP
        return Refresh.SKIP if picker.in_flight(peer) else Refresh.ASK

    def stall_reasons(self, picker: Picker) -> dict[str, str]:
        """Why each provider seen could not send the missing chunks."""
        reasons = {}
        for peer in self.sources:
            why = self.why.get(peer)
            if peer in self.active and picker.have(peer) is not None:
                # Linked to the end: the last thing it said was its chunk list.
                why = why if why == failures.STALE else failures.HOLDS_NONE
            if why is not None:
                reasons[peer] = why
        return reasons
