"""How long the node's services wait for the network, side by side.

A download and a compute job wait for different things, so some of these differ on
purpose; each has its own name and says why.
"""

from __future__ import annotations

from typing import Final

# One DHT lookup for the providers of a content ID before a download (get, fetch).
# A download that finds no provider fails, so it can afford a slow lookup.
PROVIDER_FIND_TIMEOUT: Final = 10.0
# Dialing a provider and opening a transfer stream to it.  Often it is the only
# provider, and giving up on it fails the download, so a slow dial is waited for.
PROVIDER_OPEN_TIMEOUT: Final = 15.0
# A connected provider's data-channel offer, which comes over libp2p.  A busy provider
# is slow to offer, and the libp2p stream the download falls back to costs several
# times the CPU per byte on both sides: waiting is cheaper than falling back.  In a
# crowd of 100 downloaders on one machine, offers took 2-15 s (docs/benchmarks.md).
DATA_OFFER_TIMEOUT: Final = 15.0
# Connecting to the data port the provider offered.  A firewall may drop the packets
# without a word; the libp2p stream is the way round it, so this fails fast.
DATA_CONNECT_TIMEOUT: Final = 5.0
# compute run: looking up workers, and the providers of the job's inputs (which only
# rank the workers).  The job waits for it, and docs/compute.md promises 5 s.
WORKER_FIND_TIMEOUT: Final = 5.0
# Opening a compute stream to a worker.  A worker that does not answer in time is
# replaced by the next candidate (up to 4 per replica), so waiting longer for one
# costs more than it saves.
WORKER_OPEN_TIMEOUT: Final = 10.0
