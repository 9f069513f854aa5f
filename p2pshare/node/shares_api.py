"""Control methods for shares: share, ls, unshare, pin, unpin, gc.

``ls`` (and ``status``, and each reprovide) first checks every share's files with
``lstat`` (p2pshare.store.shares.changed_file), so a file changed since it was shared
shows as stale there and stops being announced, not only once a chunk is asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pshare.control.server import Emit, Handler, InvalidParamsError
from p2pshare.node.discovery import withheld
from p2pshare.proto.cid import ContentId
from p2pshare.proto.sealed import plain_size
from p2pshare.proto.ticket import MAX_ADDRS, Ticket
from p2pshare.store.shares import changed_file

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pshare.proto.manifest import Manifest
    from p2pshare.store.catalog import ShareRow
    from p2pshare.store.shares import PreparedShare, ShareStore

log = logging.getLogger(__name__)
# At most this many progress events per second reach the CLI, whatever the disk speed.
PROGRESS_INTERVAL = 0.2


def _str_param(params: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidParamsError(f"parameter {key!r} must be a non-empty string")
    return value


def _cid_param(params: dict[str, Any]) -> str:
    text = _str_param(params, "cid")
    assert text is not None
    return str(ContentId.parse(text))


def _recipients_param(params: dict[str, Any]) -> list[str]:
    value = params.get("to", [])
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise InvalidParamsError("parameter 'to' must be a list of peer IDs")
    return value


async def checked_shares(store: ShareStore) -> list[ShareRow]:
    """Every share, after marking stale those whose files changed (stat only, in a thread)."""
    todo = [
        (row.cid, store.share_files(row)) for row in store.catalog.shares() if not row.stale_reason
    ]
    changed = await trio.to_thread.run_sync(
        lambda: [(cid, changed_file(files)) for cid, files in todo]
    )
    for cid, reason in changed:
        if reason is not None:
            store.mark_stale(cid, reason)
    return store.catalog.shares()


def share_doc(row: ShareRow, manifest: Manifest) -> dict[str, Any]:
    """A share as ``share``, ``ls``, ``pin`` and the like show it."""
    doc = {
        "cid": row.cid,
        "name": row.name,
        "kind": row.kind,
        # What the user shared; a stored copy's own root is an internal path in the home.
        "path": row.origin or row.root,
        "size": row.total_size,
        "files": row.file_count,
        "pinned": row.pinned,
        "stored": row.stored,
        "stale": row.stale_reason,
    }
    if manifest.sealed is not None:
        # The size of what was shared; the ciphertext in the store is a tag per chunk larger.
        sizes = [plain_size(entry.size, manifest.chunk_size) for entry in manifest.entries]
        doc |= {"size": sum(sizes), "ciphertext_size": row.total_size}
    return doc


@dataclass
class SharesApi:
    store: ShareStore
    peer_id: str
    addrs: Callable[[], list[str]]
    quota_bytes: int
    # Announces a new share; how many peers hold its record once `share` returns.
    on_shared: Callable[[str], Awaitable[int | None]]

    def ticket(self, cid: str) -> str:
        addrs = tuple(self.addrs()[:MAX_ADDRS])
        return str(Ticket(ContentId.parse(cid), self.peer_id, addrs))

    async def share(self, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        path_text = _str_param(params, "path")
        assert path_text is not None
        path = Path(path_text)
        if not path.is_absolute():
            raise InvalidParamsError("parameter 'path' must be an absolute path")
        name = _str_param(params, "name", required=False)
        copy = bool(params.get("copy", False))
        recipients = _recipients_param(params)
        anyone_may_seed = bool(params.get("anyone_may_seed", False))
        confirmed = bool(params.get("yes", False))
        guard = self.store.guard
        if guard is not None:
            await trio.to_thread.run_sync(guard.check_share_path, path)
        token = trio.lowlevel.current_trio_token()
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL or done == total:
                last = now
                trio.from_thread.run(
                    emit, "progress", {"done": done, "total": total}, trio_token=token
                )

        def prepare() -> PreparedShare:
            if recipients:
                return self.store.prepare_private(
                    path,
                    recipients,
                    anyone_may_seed=anyone_may_seed,
                    name=name,
                    progress=progress,
                    confirmed=confirmed,
                )
            return self.store.prepare(
                path, name=name, copy=copy, progress=progress, confirmed=confirmed
            )

        prepared = await trio.to_thread.run_sync(prepare)
        row = self.store.commit(prepared)
        # Sharing revoked content again is the user taking the revocation back: it is
        # served and announced again, and the reply says so.
        unrevoked = self.store.catalog.unrevoke(row.cid)
        doc = self._full_doc(row)
        doc["unrevoked"] = unrevoked
        if prepared.stored:
            report = self.store.gc(keep_bytes=self.quota_bytes)
            doc["gc_removed"] = list(report.removed)
        withheld_now = doc["withheld"] is not None
        doc["announced_to"] = 0 if withheld_now else await self.on_shared(row.cid)
        log.info("shared %s as %s (%d bytes)", path, row.cid, row.total_size)
        return doc

    def _full_doc(self, row: ShareRow) -> dict[str, Any]:
        doc = self._doc(row)
        private = self.store.catalog.private_share(row.cid)
        if private is not None:
            doc["recipients"] = list(private.recipients)
            doc["anyone_may_seed"] = private.anyone_may_seed
        doc["ticket"] = self.ticket(row.cid)
        doc["withheld"] = withheld(self.store.catalog, row.cid)
        doc["skipped"] = [{"path": p, "reason": r} for p, r in row.skipped]
        return doc

    async def ls(self, _params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        # Compute job outputs are the requesters', not the user's: `compute outputs`.
        outputs = self.store.catalog.job_outputs()
        rows = [row for row in await checked_shares(self.store) if row.cid not in outputs]
        return {"shares": [self._full_doc(row) for row in rows]}

    def _doc(self, row: ShareRow) -> dict[str, Any]:
        return share_doc(row, self.store.signed_manifest(row.cid).manifest)

    async def unshare(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        revoke = bool(params.get("revoke", False))
        cid = _cid_param(params)
        manifest = self.store.signed_manifest(cid).manifest
        return share_doc(self.store.remove(cid, revoke=revoke), manifest) | {"revoked": revoke}

    async def pin(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        return self._doc(self.store.set_pinned(_cid_param(params), pinned=True))

    async def unpin(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        return self._doc(self.store.set_pinned(_cid_param(params), pinned=False))

    async def gc(self, params: dict[str, Any], _emit: Emit) -> dict[str, Any]:
        keep = params.get("keep_bytes", 0)
        if type(keep) is not int or keep < 0:
            raise InvalidParamsError("parameter 'keep_bytes' must be a non-negative integer")
        report = self.store.gc(keep_bytes=keep)
        return {
            "removed": list(report.removed),
            "freed_bytes": report.freed_bytes,
            "pinned": report.pinned,
            "pinned_bytes": report.pinned_bytes,
        }

    def handlers(self) -> dict[str, Handler]:
        return {
            "share": self.share,
            "ls": self.ls,
            "unshare": self.unshare,
            "pin": self.pin,
            "unpin": self.unpin,
            "gc": self.gc,
        }
