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


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:
        def __init__(self, _name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert malloc.keep_freed_buffers() is False
