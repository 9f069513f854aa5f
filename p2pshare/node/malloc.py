"""glibc malloc settings for a process that moves 1 MiB buffers all day.

Every chunk the daemon sends or receives passes through a fresh buffer of about
1 MiB (a read, a decrypted frame).  By default glibc hands memory above its trim
threshold back to the kernel as soon as it is freed at the top of the heap, and the
next chunk faults it in again, zeroed: in a 1 GiB `get` the downloading daemon spent
about a second of system time on that churn (docs/benchmarks.md).  Keeping up to
``TRIM_THRESHOLD`` of freed memory, and serving buffers below ``MMAP_THRESHOLD`` from
the heap instead of fresh mappings, ends it for a few MiB of RSS.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

# A download keeps a few dozen chunks in flight; their buffers stay in the heap.
TRIM_THRESHOLD: Final = 32 << 20
# Above a default 1 MiB chunk and its frame; the rare larger chunks keep their own
# mappings, so the heap does not hold on to 16 MiB holes.
MMAP_THRESHOLD: Final = 4 << 20


def keep_freed_buffers() -> bool:
    """Apply the settings above; False where the C library has no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
    if not applied:
        log.debug("mallopt refused the buffer settings; keeping the C library's defaults")
    return applied
