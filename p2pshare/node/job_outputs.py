"""The job outputs a worker keeps for requesters (docs/compute.md, "Job outputs").

Each job's stdout is stored content in the home's ``content/``, unpinned and under
``[store] quota_bytes``, recorded in the catalog's ``job_outputs`` table with the one
peer it may be served to.  It is kept until that peer has fetched it, or for
``[compute] output_keep_seconds``; then it is reclaimed.  :class:`JobOutputs` is the
compute service's :class:`~p2pshare.compute.service.OutputStore` and serves the
``compute_outputs`` control method.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from p2pshare.proto.cid import ContentId

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.control.server import Emit
    from p2pshare.store.shares import ShareStore

log = logging.getLogger(__name__)

# Seconds between sweeps of outputs that were fetched or outlived output_keep_seconds.
SWEEP_INTERVAL: Final = 300.0


@dataclass
class JobOutputs:
    store: ShareStore
    quota_bytes: int
    # The current [compute] output_keep_seconds (compute offer may change it).
    keep_seconds: Callable[[], int]

    def make_room(self, nbytes: int) -> bool:
        """Reclaim fetched and expired outputs, then what the quota needs for ``nbytes``."""
        self.store.gc_job_outputs()
        keep = self.quota_bytes - nbytes
        if keep < 0:
            return False
        self.store.gc(keep_bytes=keep)
        return self.store.stored_bytes() <= keep

    def keep(self, path: Path, requester: str) -> ContentId:
        """Keep a job's stdout as unpinned stored content that only ``requester`` can fetch."""
        # A job's stdout, written and closed by this node in its home: no user's key
        # file, and no edit can race its copy.
        prepared = self.store.prepare(path, copy=True, name=path.name, confirmed=True, ours=True)
        keep_until = int(time.time()) + self.keep_seconds()
        row = self.store.commit_job_output(prepared, requester, keep_until)
        return ContentId.parse(row.cid)

    def delivered(self, cid: ContentId, requester: str) -> None:
        self.store.catalog.set_job_output_fetched(str(cid), requester)

    async def sweep(self) -> None:
        """Remove fetched and expired outputs now and then, whether jobs come or not."""
        while True:
            # On the event loop, like every other gc, so no two run at once.
            report = self.store.gc_job_outputs()
            if report.removed:
                log.info("removed %d job output(s) no longer needed", len(report.removed))
            await trio.sleep(SWEEP_INTERVAL)

    async def list(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        """``compute_outputs``: the outputs kept, for whom and until when."""
        docs = []
        for cid, output in sorted(self.store.catalog.job_outputs().items()):
            row = self.store.catalog.share(cid)
            if row is not None:
                docs.append(
                    {
                        "cid": cid,
                        "name": row.name,
                        "size": row.total_size,
                        "requesters": list(output.requesters),
                        "keep_until": output.keep_until or None,
                        "pinned": row.pinned,
                    }
                )
        return {"outputs": docs, "stored_bytes": self.store.stored_bytes()}
