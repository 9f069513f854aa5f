"""The one vocabulary for a download's life (drawn in docs/transfer.md).

A download has two records in the catalog, and each state belongs to one of them:

* ``download_requests``: what the user asked for, kept until it completes.
  :attr:`ACTIVE` (run now, and resumed at the daemon's next start),
  :attr:`PAUSED` (kept until a ``get`` resumes it) or :attr:`FAILED` (with why).
* ``downloads``: what has been verified so far.  :attr:`RUNNING` (the partial
  file and its verified-chunk bitfield; a resume starts from it) or
  :attr:`COMPLETE` (the file is in place).

``p2pshare downloads`` shows an active request as :attr:`RUNNING`, or as
:attr:`RETRYING` while it waits to try again: that state is shown, never stored.
"""

from __future__ import annotations

from enum import StrEnum


class DownloadState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    FAILED = "failed"
    RUNNING = "running"
    COMPLETE = "complete"
    RETRYING = "retrying"


# Which state each table may hold.
REQUEST_STATES = frozenset({DownloadState.ACTIVE, DownloadState.PAUSED, DownloadState.FAILED})
PROGRESS_STATES = frozenset({DownloadState.RUNNING, DownloadState.COMPLETE})


class StopReason(StrEnum):
    """Why a running download was stopped from outside (not by its own failure)."""

    PAUSED = "paused"
    CANCELLED = "cancelled"
