"""Signed peer records from DHT answers, each distinct one verified once.

A DHT answer names up to 20 peers, each with its signed peer record (an envelope
signed with that peer's key), and py-libp2p verifies the signature of each at every
answer and stores it in the peer store again: about 0.15 ms and 0.25 ms a record on a
busy machine, 4% of a crowd downloader's CPU (cProfile; docs/benchmarks.md), for
thousands of copies of the records of the same hundred peers.  The same bytes carry
the same valid signature, so a record seen before is not verified again, and the
peer store is given it again only once the copy it holds is older than
``RESTORE_AFTER`` (its addresses live ``RECORD_TTL``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from libp2p.peer.envelope import Envelope, consume_envelope

if TYPE_CHECKING:
    from collections.abc import Callable

    from libp2p.abc import IHost
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

log = logging.getLogger(__name__)
PEER_RECORD_DOMAIN = "libp2p-peer-record"
# How long the addresses of a signed record stay in the peer store (py-libp2p's TTL).
RECORD_TTL = 7200
RESTORE_AFTER = 600.0
RECORDS_KEPT = 4096


class VerifiedRecords:
    """The signed peer records verified so far, the most recently seen ``size`` of them."""

    def __init__(
        self, size: int = RECORDS_KEPT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._size = size
        self._clock = clock
        # Envelope bytes -> (envelope, its record, when the peer store was last given it).
        self._seen: OrderedDict[bytes, tuple[Envelope, PeerRecord, float]] = OrderedDict()

    def consume(self, host: IHost, raw: bytes, signer: ID | None = None) -> bool:
        """Whether ``raw`` is a valid signed peer record (of ``signer``, if given); if it
        is, the peer store holds its addresses."""
        now = self._clock()
        seen = self._seen.get(raw)
        if seen is None:
            try:
                envelope, record = consume_envelope(raw, PEER_RECORD_DOMAIN)
            except Exception as exc:  # noqa: BLE001 - any malformed or forged record
                log.debug("signed peer record refused: %s", exc)
                return False
            stored_at = -float("inf")
        else:
            envelope, record, stored_at = seen
            self._seen.move_to_end(raw)
        if signer is not None and record.peer_id != signer:
            return False
        if now - stored_at >= RESTORE_AFTER:
            if not host.get_peerstore().consume_peer_record(envelope, RECORD_TTL):
                return False
            stored_at = now
        self._seen[raw] = (envelope, record, stored_at)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True
