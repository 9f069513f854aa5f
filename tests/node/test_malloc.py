"""The daemon's glibc malloc settings (p2pshare.node.malloc)."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from p2pshare.node import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_settings() -> None:
    # In a child: the settings last for the whole process.
    code = "from p2pshare.node.malloc import keep_freed_buffers as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# Eight threads hold 1 MiB buffers at the same time, then the arenas are counted from
# glibc's malloc_info report (one <heap> element per arena).
_COUNT_ARENAS = """
import ctypes, sys, tempfile, threading
from p2pshare.node.malloc import keep_freed_buffers
if sys.argv[1] == "settings":
    assert keep_freed_buffers()
barrier = threading.Barrier(8)
def work():
    buffers = [bytearray(1 << 20) for _ in range(4)]
    barrier.wait()
    del buffers
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_threads_that_allocate_share_at_most_arena_max_arenas() -> None:
    def arenas(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _COUNT_ARENAS, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert arenas("settings") <= malloc.ARENA_MAX
    # Without the setting the same threads get more: the test can see the difference.
    assert arenas("defaults") > malloc.ARENA_MAX


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:
        def __init__(self, _name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert malloc.keep_freed_buffers() is False
