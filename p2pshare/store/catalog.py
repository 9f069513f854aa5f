"""The SQLite catalog of shares, their files, hash pages, pins and downloads.

WAL mode, so readers never wait for a writer; a versioned schema upgraded by
the ordered MIGRATIONS below (``PRAGMA user_version`` records how far a
database has come).  A database that cannot be opened or is corrupt gives a
UserError with the recovery step from docs/store.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pshare.errors import UserError
from p2pshare.store.lifecycle import PROGRESS_STATES, REQUEST_STATES, DownloadState

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE shares (
        cid TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT,
        root TEXT NOT NULL,
        stored INTEGER NOT NULL,
        signed_manifest BLOB NOT NULL,
        total_size INTEGER NOT NULL,
        file_count INTEGER NOT NULL,
        pinned INTEGER NOT NULL,
        stale_reason TEXT,
        added_at INTEGER NOT NULL  -- Unix time in nanoseconds: orders gc, oldest first
    );
    CREATE TABLE share_files (
        cid TEXT NOT NULL REFERENCES shares(cid) ON DELETE CASCADE,
        entry_index INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        PRIMARY KEY (cid, entry_index)
    );
    CREATE TABLE hash_pages (
        cid TEXT NOT NULL REFERENCES shares(cid) ON DELETE CASCADE,
        page_index INTEGER NOT NULL,
        page BLOB NOT NULL,
        PRIMARY KEY (cid, page_index)
    );
    CREATE TABLE downloads (
        cid TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        signed_manifest BLOB NOT NULL,
        verified BLOB NOT NULL,
        state TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE known_peers (
        peer_id TEXT PRIMARY KEY,
        addrs TEXT NOT NULL,  -- JSON list of multiaddr strings
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE provide_status (
        cid TEXT PRIMARY KEY REFERENCES shares(cid) ON DELETE CASCADE,
        provided_at INTEGER NOT NULL,
        provided_to INTEGER NOT NULL
    );
    """,
    # What the user asked for (kept from the moment `get` is accepted, before any
    # manifest is known), so the daemon can resume it at start; `downloads` keeps
    # what has been verified.  Downloads left unfinished by an older version are
    # resumed through the DHT: their tickets were not kept.
    """
    CREATE TABLE download_requests (
        cid TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        sources TEXT NOT NULL,  -- JSON [[peer_id, [multiaddr, ...]], ...] from tickets
        force INTEGER NOT NULL,
        state TEXT NOT NULL,  -- active (resumed at start), paused or failed
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    INSERT INTO download_requests
        SELECT cid, destination, '[]', 0, 'active', NULL, updated_at, updated_at
        FROM downloads WHERE state = 'running';
    """,
    # The umask of the command that asked for a download: a resumed download's files
    # get the modes that user expects, not the daemon's.  NULL: the daemon's umask.
    """
    ALTER TABLE download_requests ADD COLUMN umask INTEGER;
    """,
    # Compute job outputs (stored shares): served only to the requester that ran the
    # job, never announced, and reclaimable once fetched or past keep_until.
    """
    CREATE TABLE job_outputs (
        cid TEXT NOT NULL REFERENCES shares(cid) ON DELETE CASCADE,
        requester TEXT NOT NULL,  -- peer ID, the only peer it is served to
        keep_until INTEGER NOT NULL,  -- Unix seconds; 0 once the requester fetched it
        PRIMARY KEY (cid, requester)
    );
    """,
    # What `ls` shows of a share besides its manifest: the path the user shared (a
    # stored copy's root is inside the home) and what the scan skipped.
    """
    ALTER TABLE shares ADD COLUMN origin TEXT;
    ALTER TABLE shares ADD COLUMN skipped TEXT NOT NULL DEFAULT '[]';  -- JSON [[path, reason]]
    """,
    # Private shares (docs/store.md): whom this node sealed a share to, whether peers
    # not named may fetch its ciphertext to help seed, and the content IDs revoked by
    # `unshare --revoke`, which this node never serves again.
    """
    CREATE TABLE private_shares (
        cid TEXT PRIMARY KEY REFERENCES shares(cid) ON DELETE CASCADE,
        recipients TEXT NOT NULL,  -- JSON [peer ID], the sharer's own included
        anyone_may_seed INTEGER NOT NULL
    );
    CREATE TABLE revoked (cid TEXT PRIMARY KEY);
    """,
)


@dataclass(frozen=True)
class ShareRow:
    cid: str
    kind: str
    name: str | None
    root: str
    stored: bool
    signed_manifest: bytes
    total_size: int
    file_count: int
    pinned: bool
    stale_reason: str | None
    added_at: int
    # The path the user shared, when ``root`` is a stored copy inside the home.
    origin: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PrivateShare:
    """Whom a private share was sealed to, and who may fetch its ciphertext from this node."""

    recipients: tuple[str, ...]
    anyone_may_seed: bool


@dataclass(frozen=True)
class JobOutput:
    """A stored share holding a compute job's stdout (docs/compute.md, "Job outputs")."""

    requesters: tuple[str, ...]
    keep_until: int  # Unix seconds; 0 once every requester fetched it


@dataclass(frozen=True)
class FileStamp:
    """What a shared file looked like when it was hashed."""

    entry_index: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class KnownPeer:
    peer_id: str
    addrs: tuple[str, ...]
    last_seen: int


@dataclass(frozen=True)
class ProvideStatus:
    """When a share was last announced on the DHT, and to how many peers."""

    provided_at: int
    provided_to: int


@dataclass(frozen=True)
class DownloadRow:
    cid: str
    destination: str
    signed_manifest: bytes
    verified: bytes
    state: DownloadState  # RUNNING or COMPLETE
    updated_at: int


@dataclass(frozen=True)
class DownloadRequest:
    """A download the user asked for and that has not completed."""

    cid: str
    destination: str
    sources: tuple[tuple[str, tuple[str, ...]], ...]  # (peer ID, multiaddrs) from tickets
    force: bool
    state: DownloadState  # ACTIVE, PAUSED or FAILED
    error: str | None
    created_at: int
    updated_at: int
    # The requesting command's umask; None: the daemon's.
    umask: int | None = None


_REQUEST_COLUMNS = "cid, destination, sources, force, state, error, created_at, updated_at, umask"


def _request(row: sqlite3.Row) -> DownloadRequest:
    return DownloadRequest(
        cid=row["cid"],
        destination=row["destination"],
        sources=tuple((peer, tuple(addrs)) for peer, addrs in json.loads(row["sources"])),
        force=bool(row["force"]),
        state=DownloadState(row["state"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        umask=row["umask"],
    )


_SHARE_COLUMNS = (
    "cid, kind, name, root, stored, signed_manifest, total_size, file_count, pinned, "
    "stale_reason, added_at, origin, skipped"
)


def _share(row: sqlite3.Row) -> ShareRow:
    return ShareRow(
        cid=row["cid"],
        kind=row["kind"],
        name=row["name"],
        root=row["root"],
        stored=bool(row["stored"]),
        signed_manifest=row["signed_manifest"],
        total_size=row["total_size"],
        file_count=row["file_count"],
        pinned=bool(row["pinned"]),
        stale_reason=row["stale_reason"],
        added_at=row["added_at"],
        origin=row["origin"],
        skipped=tuple((path, reason) for path, reason in json.loads(row["skipped"])),
    )


def _corrupt(path: Path, exc: sqlite3.Error) -> UserError:
    return UserError(
        f"the catalog {path} cannot be used ({exc}); stop the daemon, move the file away "
        "and start it again to rebuild an empty catalog (see docs/store.md)"
    )


def _private_files(path: Path) -> None:
    """Make the database 0600 before SQLite opens it, whatever the umask: SQLite gives
    the ``-wal`` and ``-shm`` files it creates the database's mode.  Those of a catalog
    from an older version are made private too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)


class Catalog:
    """All catalog reads and writes; one connection, used from the daemon's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _private_files(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            problem = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise _corrupt(path, exc) from None
        if problem != "ok":
            self._db.close()
            raise _corrupt(path, sqlite3.DatabaseError(problem))
        _private_files(path)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise UserError(
                f"the catalog {self.path} was written by a newer p2pshare (schema {version}); "
                "upgrade p2pshare"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def add_share(self, row: ShareRow, stamps: Sequence[FileStamp], pages: Sequence[bytes]) -> None:
        """Record a share, replacing an earlier record of the same content ID."""
        with self._transaction():
            self._db.execute("DELETE FROM shares WHERE cid = ?", (row.cid,))
            self._db.execute(
                f"INSERT INTO shares ({_SHARE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                (
                    row.cid,
                    row.kind,
                    row.name,
                    row.root,
                    int(row.stored),
                    row.signed_manifest,
                    row.total_size,
                    row.file_count,
                    int(row.pinned),
                    row.stale_reason,
                    row.added_at,
                    row.origin,
                    json.dumps([list(item) for item in row.skipped]),
                ),
            )
            self._db.executemany(
                "INSERT INTO share_files (cid, entry_index, size, mtime_ns) VALUES (?,?,?,?)",
                [(row.cid, s.entry_index, s.size, s.mtime_ns) for s in stamps],
            )
            self._db.executemany(
                "INSERT INTO hash_pages (cid, page_index, page) VALUES (?,?,?)",
                [(row.cid, index, page) for index, page in enumerate(pages)],
            )

    def share(self, cid: str) -> ShareRow | None:
        row = self._db.execute(
            f"SELECT {_SHARE_COLUMNS} FROM shares WHERE cid = ?",  # noqa: S608
            (cid,),
        ).fetchone()
        return _share(row) if row else None

    def shares(self) -> list[ShareRow]:
        rows = self._db.execute(
            f"SELECT {_SHARE_COLUMNS} FROM shares ORDER BY added_at, cid"  # noqa: S608
        )
        return [_share(row) for row in rows]

    def shares_with_root(self, root: str) -> list[ShareRow]:
        rows = self._db.execute(
            f"SELECT {_SHARE_COLUMNS} FROM shares WHERE root = ?",  # noqa: S608
            (root,),
        )
        return [_share(row) for row in rows]

    def stamps(self, cid: str) -> list[FileStamp]:
        rows = self._db.execute(
            "SELECT entry_index, size, mtime_ns FROM share_files WHERE cid = ? "
            "ORDER BY entry_index",
            (cid,),
        )
        return [FileStamp(r["entry_index"], r["size"], r["mtime_ns"]) for r in rows]

    def page(self, cid: str, page_index: int) -> bytes | None:
        row = self._db.execute(
            "SELECT page FROM hash_pages WHERE cid = ? AND page_index = ?", (cid, page_index)
        ).fetchone()
        return bytes(row["page"]) if row else None

    def remove_share(self, cid: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM shares WHERE cid = ?", (cid,))
        return cursor.rowcount > 0

    def set_pinned(self, cid: str, *, pinned: bool) -> bool:
        cursor = self._db.execute("UPDATE shares SET pinned = ? WHERE cid = ?", (int(pinned), cid))
        return cursor.rowcount > 0

    def mark_stale(self, cid: str, reason: str) -> None:
        self._db.execute(
            "UPDATE shares SET stale_reason = ? WHERE cid = ? AND stale_reason IS NULL",
            (reason, cid),
        )

    def save_download(self, row: DownloadRow) -> None:
        """Insert or update a download; its ``verified`` bitfield is replaced whole."""
        if row.state not in PROGRESS_STATES:
            raise ValueError(f"a download's progress record cannot be {row.state!r}")
        self._db.execute(
            "INSERT INTO downloads (cid, destination, signed_manifest, verified, state, updated_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(cid) DO UPDATE SET destination=excluded.destination,"
            " verified=excluded.verified, state=excluded.state, updated_at=excluded.updated_at",
            (
                row.cid,
                row.destination,
                row.signed_manifest,
                row.verified,
                row.state,
                row.updated_at,
            ),
        )

    def download(self, cid: str) -> DownloadRow | None:
        row = self._db.execute(
            "SELECT cid, destination, signed_manifest, verified, state, updated_at "
            "FROM downloads WHERE cid = ?",
            (cid,),
        ).fetchone()
        if row is None:
            return None
        return DownloadRow(
            row["cid"],
            row["destination"],
            bytes(row["signed_manifest"]),
            bytes(row["verified"]),
            DownloadState(row["state"]),
            row["updated_at"],
        )

    def save_download_request(self, row: DownloadRequest) -> None:
        """Insert or replace the request for ``row.cid``."""
        if row.state not in REQUEST_STATES:
            raise ValueError(f"a download request cannot be {row.state!r}")
        self._db.execute(
            f"INSERT OR REPLACE INTO download_requests ({_REQUEST_COLUMNS})"  # noqa: S608
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                row.cid,
                row.destination,
                json.dumps([[peer, list(addrs)] for peer, addrs in row.sources]),
                int(row.force),
                row.state,
                row.error,
                row.created_at,
                row.updated_at,
                row.umask,
            ),
        )

    def download_request(self, cid: str) -> DownloadRequest | None:
        row = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM download_requests WHERE cid = ?",  # noqa: S608
            (cid,),
        ).fetchone()
        return _request(row) if row else None

    def download_requests(self) -> list[DownloadRequest]:
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM download_requests ORDER BY created_at, cid"  # noqa: S608
        )
        return [_request(row) for row in rows]

    def set_download_state(
        self, cid: str, state: DownloadState, error: str | None, now: int
    ) -> None:
        if state not in REQUEST_STATES:
            raise ValueError(f"a download request cannot be {state!r}")
        self._db.execute(
            "UPDATE download_requests SET state = ?, error = ?, updated_at = ? WHERE cid = ?",
            (state, error, now, cid),
        )

    def remove_download_request(self, cid: str) -> None:
        self._db.execute("DELETE FROM download_requests WHERE cid = ?", (cid,))

    def forget_download(self, cid: str) -> None:
        """Drop the request and the verified-chunk record of ``cid``."""
        with self._transaction():
            self._db.execute("DELETE FROM download_requests WHERE cid = ?", (cid,))
            self._db.execute("DELETE FROM downloads WHERE cid = ?", (cid,))

    def save_peers(self, peers: Sequence[KnownPeer], keep: int) -> None:
        """Remember peers (and their addresses) for the next start; keep the newest ``keep``."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO known_peers (peer_id, addrs, last_seen) VALUES (?,?,?) "
                "ON CONFLICT(peer_id) DO UPDATE SET addrs=excluded.addrs, "
                "last_seen=excluded.last_seen",
                [(p.peer_id, json.dumps(list(p.addrs)), p.last_seen) for p in peers],
            )
            self._db.execute(
                "DELETE FROM known_peers WHERE peer_id NOT IN "
                "(SELECT peer_id FROM known_peers ORDER BY last_seen DESC LIMIT ?)",
                (keep,),
            )

    def known_peers(self) -> list[KnownPeer]:
        rows = self._db.execute(
            "SELECT peer_id, addrs, last_seen FROM known_peers ORDER BY last_seen DESC"
        )
        peers = []
        for row in rows:
            addrs = json.loads(row["addrs"])
            if isinstance(addrs, list) and all(isinstance(a, str) for a in addrs):
                peers.append(KnownPeer(row["peer_id"], tuple(addrs), row["last_seen"]))
        return peers

    def set_provided(self, cid: str, status: ProvideStatus) -> None:
        self._db.execute(
            "INSERT INTO provide_status (cid, provided_at, provided_to) "
            "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM shares WHERE cid = ?) "
            "ON CONFLICT(cid) DO UPDATE SET provided_at=excluded.provided_at, "
            "provided_to=excluded.provided_to",
            (cid, status.provided_at, status.provided_to, cid),
        )

    def provide_status(self) -> dict[str, ProvideStatus]:
        rows = self._db.execute("SELECT cid, provided_at, provided_to FROM provide_status")
        return {r["cid"]: ProvideStatus(r["provided_at"], r["provided_to"]) for r in rows}

    def add_job_output(self, cid: str, requester: str, keep_until: int) -> None:
        self._db.execute(
            "INSERT INTO job_outputs (cid, requester, keep_until) VALUES (?,?,?) "
            "ON CONFLICT(cid, requester) DO UPDATE SET keep_until=excluded.keep_until",
            (cid, requester, keep_until),
        )

    def job_output_requesters(self, cid: str) -> frozenset[str]:
        """The peers a job output may be served to; empty for content that is not one."""
        rows = self._db.execute("SELECT requester FROM job_outputs WHERE cid = ?", (cid,))
        return frozenset(r["requester"] for r in rows)

    def set_job_output_fetched(self, cid: str, requester: str) -> None:
        self._db.execute(
            "UPDATE job_outputs SET keep_until = 0 WHERE cid = ? AND requester = ?",
            (cid, requester),
        )

    def job_outputs(self) -> dict[str, JobOutput]:
        """Every job output by content ID: its requesters and until when it is kept."""
        outputs: dict[str, JobOutput] = {}
        rows = self._db.execute("SELECT cid, requester, keep_until FROM job_outputs")
        for r in rows:
            seen = outputs.get(r["cid"])
            requesters = (seen.requesters if seen else ()) + (r["requester"],)
            keep_until = max(seen.keep_until if seen else 0, r["keep_until"])
            outputs[r["cid"]] = JobOutput(tuple(sorted(requesters)), keep_until)
        return outputs

    def add_private_share(self, cid: str, share: PrivateShare) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO private_shares (cid, recipients, anyone_may_seed) "
            "VALUES (?,?,?)",
            (cid, json.dumps(sorted(share.recipients)), share.anyone_may_seed),
        )

    def private_share(self, cid: str) -> PrivateShare | None:
        r = self._db.execute(
            "SELECT recipients, anyone_may_seed FROM private_shares WHERE cid = ?", (cid,)
        ).fetchone()
        if r is None:
            return None
        return PrivateShare(tuple(json.loads(r["recipients"])), bool(r["anyone_may_seed"]))

    def private_shares(self) -> dict[str, PrivateShare]:
        """Every private share this node sealed, by content ID."""
        rows = self._db.execute("SELECT cid, recipients, anyone_may_seed FROM private_shares")
        return {
            r["cid"]: PrivateShare(tuple(json.loads(r["recipients"])), bool(r["anyone_may_seed"]))
            for r in rows
        }

    def revoke(self, cid: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO revoked (cid) VALUES (?)", (cid,))

    def unrevoke(self, cid: str) -> bool:
        """Lift ``cid``'s revocation (it is shared again); whether it was revoked."""
        return self._db.execute("DELETE FROM revoked WHERE cid = ?", (cid,)).rowcount > 0

    def is_revoked(self, cid: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM revoked WHERE cid = ?", (cid,)).fetchone() is not None
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
