"""glibc malloc settings for a process that moves 1 MiB buffers all day.

Every chunk the daemon sends or receives passes through a fresh buffer of about
1 MiB (a read, a decrypted frame).  By default glibc hands memory above its trim
threshold back to the kernel as soon as it is freed at the top of the heap, and the
next chunk faults it in again, zeroed: in a 1 GiB `get` the downloading daemon spent
about a second of system time on that churn (docs/benchmarks.md).  Keeping up to
``TRIM_THRESHOLD`` of freed memory, and serving buffers below ``MMAP_THRESHOLD`` from
the heap instead of fresh mappings, ends it for a few MiB of RSS.  At most ``ARENA_MAX``
arenas keep that from multiplying by the number of threads that allocate.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8

# A download keeps a few dozen chunks in flight; their buffers stay in the heap.
TRIM_THRESHOLD: Final = 32 << 20
# Above a default 1 MiB chunk and its frame; the rare larger chunks keep their own
# mappings, so the heap does not hold on to 16 MiB holes.
MMAP_THRESHOLD: Final = 4 << 20
# glibc gives each thread that allocates while the others' arenas are busy an arena of
# its own, up to 8 per core, and each keeps up to TRIM_THRESHOLD of freed memory.  The
# uploader reads chunks in worker threads, so a seeder's RSS grew with the uploads
# running at once: 1.9 MB per downloader of a crowd of 30, 0.7 MB with one arena
# (docs/benchmarks.md).  Two: the event loop and one worker do not wait on each other.
ARENA_MAX: Final = 2


def keep_freed_buffers() -> bool:
    """Apply the settings above; False where the C library has no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = all(
        mallopt(option, value)
        for option, value in (
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not applied:
        log.debug("mallopt refused the buffer settings; keeping the C library's defaults")
    return applied
