"""Keep what a C library prints on stderr off the user's terminal, without touching
anyone else's stderr.

miniupnpc prints ``connect: Connection refused`` and the like with perror(3) when a
router does not answer; on the daemon's terminal that is noise (the mapping's outcome
is in ``status`` and the log). Pointing file descriptor 2 elsewhere with dup2(2) during
the call is not safe in a process with threads: the descriptor table is shared, so the
daemon's own log lines and any traceback written meanwhile would go there too.

:func:`quietly` therefore runs the call in a thread of its own that first takes a
private copy of the descriptor table (unshare(2) with ``CLONE_FILES``, Linux), closes
every descriptor it inherited but 0, 1 and 2 -- a copy would keep files and sockets
other threads close open (a listener still accepting, a peer not getting its FIN) until
the thread ends -- and only then points its own descriptor 2 at a temporary file. The
calling thread and every other keep their stderr. What the library wrote is logged at
debug level. The garbage collector is off meanwhile, so no other thread's object is
finalised in that table (the calls are serialised by their caller). Where the kernel
refuses unshare (a seccomp filter), the call runs as it is and the noise stays: losing
other threads' output would be worse.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import tempfile
import threading
from typing import TYPE_CHECKING, Final, TypeVar

import outcome

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
log = logging.getLogger(__name__)

_CLONE_FILES: Final = 0x400
# A C library's complaints are a line or two; more is not worth keeping in the log.
MAX_KEPT: Final = 4096


def _own_descriptor_table() -> bool:
    """Give the calling thread a private copy of the descriptor table holding only 0-2."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_FILES) != 0:
        log.debug("unshare(CLONE_FILES): %s", os.strerror(ctypes.get_errno()))
        return False
    # The private table's entries only: the process's own stay open.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    return True


def quietly(work: Callable[[], T], what: str) -> T:
    """``work()``, with whatever it writes to file descriptor 2 logged at debug level as
    said by ``what``, not printed. Blocks: call it from a worker thread."""
    result: list[outcome.Outcome[T]] = []
    said = bytearray()

    def in_own_thread() -> T:
        # A collection run in this thread would finalise other threads' objects against
        # the private descriptor table: a socket closed there stays open for the process,
        # a file flushed there writes into whatever holds that number here.
        collecting = gc.isenabled()
        gc.disable()
        try:
            if not _own_descriptor_table():
                return work()
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    return work()
                finally:
                    sink.seek(0)
                    said.extend(sink.read(MAX_KEPT))
        finally:
            if collecting:
                gc.enable()

    thread = threading.Thread(
        target=lambda: result.append(outcome.capture(in_own_thread)),
        name=f"quiet {what}",
        daemon=True,
    )
    thread.start()
    thread.join()
    if said:
        log.debug("%s wrote on stderr: %s", what, said.decode(errors="replace").strip())
    return result[0].unwrap()
