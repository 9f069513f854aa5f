"""Reading a range of a file into a lent buffer, from the event loop when it is cached.

A seeder's chunks are usually in the page cache (they were read for the previous
downloader), and copying a cached MiB takes a fraction of a millisecond, while handing
the read to a worker thread costs two trips through the scheduler: on a loaded
machine that round trip, not the read, bounded a crowd's throughput
(docs/benchmarks.md, "Many downloaders").  ``RWF_NOWAIT`` (Linux 4.14) reads only
what is cached and refuses to touch the disk, so the caller tries that first and
sends only the misses to a thread.
"""

from __future__ import annotations

import errno
import os

from p2pshare.errors import WouldBlockError


def read_at(fd: int, into: memoryview, offset: int, *, wait: bool = True) -> int:
    """``preadv`` of ``len(into)`` bytes at ``offset``; the bytes read.  With ``wait``
    False, WouldBlockError unless all of them came from the page cache at once."""
    if wait:
        return os.preadv(fd, [into], offset)
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        raise WouldBlockError("this system cannot read only what is cached")
    try:
        read = os.preadv(fd, [into], offset, nowait)
    except BlockingIOError:
        raise WouldBlockError("not in the page cache") from None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            raise WouldBlockError("this file system cannot read only what is cached") from None
        raise
    if read < len(into):
        # Partly cached, or the file is shorter now: the waiting read tells which.
        raise WouldBlockError("not all of it is in the page cache")
    return read
