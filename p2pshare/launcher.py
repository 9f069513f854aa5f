"""Start and stop real daemon processes: used by ``p2pshare demo``, tests and benchmarks."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from p2pshare.control.client import ControlClient
from p2pshare.errors import P2PShareError, UserError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from p2pshare.home import Home


class DaemonStartError(UserError):
    """A daemon process exited or stayed silent instead of announcing readiness."""


def cli_command(home: Home, *args: str) -> list[str]:
    """The argv that runs ``p2pshare --home HOME ARGS`` with this interpreter."""
    return [sys.executable, "-m", "p2pshare_cli", "--home", str(home.root), *args]


class DaemonProcess:
    """One ``p2pshare daemon`` child process."""

    def __init__(
        self,
        home: Home,
        *,
        log_level: str = "info",
        wrapper: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        """``wrapper`` prefixes the command (e.g. ``ip netns exec NS``); ``args`` are
        extra ``p2pshare daemon`` options (e.g. ``--upload-rate``)."""
        self.home = home
        self._log_level = log_level
        self._wrapper = list(wrapper)
        self._args = list(args)
        self._proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def stderr_path(self) -> os.PathLike[str]:
        return self.home.root / "daemon.stderr"

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Spawn the daemon and return its ready announcement."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting (start several, then wait_ready each)."""
        self.home.create()
        # In the home, so private like everything else there.
        fd = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as stderr:  # noqa: PTH123 - handed to the child
            self._proc = subprocess.Popen(  # noqa: S603 - argv built from our own interpreter
                [
                    *self._wrapper,
                    *cli_command(self.home, "daemon", "--json", "--log-level", self._log_level),
                    *self._args,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the ready announcement of a spawned daemon."""
        try:
            line = self._read_line(time.monotonic() + timeout)
            self.info = json.loads(line)
        except (DaemonStartError, ValueError) as exc:
            self.kill()
            raise DaemonStartError(f"{exc}; its stderr said: {self._stderr_tail()}") from None
        return self.info

    def _read_line(self, deadline: float) -> str:
        assert self._proc is not None
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonStartError(f"daemon for {self.home.root} did not become ready in time")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise DaemonStartError(
                        f"daemon for {self.home.root} exited with status {self._proc.wait()}"
                    )
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode()

    def _stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:  # noqa: PTH123
                return f.read()[-2000:].decode(errors="replace").strip() or "(nothing)"
        except OSError:
            return "(unreadable)"

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with ControlClient(self.home) as client:
            return client.call(method, params)

    def stop(self, timeout: float = 30.0) -> int:
        """Ask the daemon to stop; fall back to SIGTERM, then SIGKILL. Return its status."""
        if self._proc is None or self._proc.poll() is not None:
            return self.wait(timeout)
        try:
            with ControlClient(self.home, timeout=timeout) as client:
                client.call("stop")
                client.wait_closed()
        except P2PShareError:
            self._proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as after a crash."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.stop()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()


def run_cli(home: Home, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one ``p2pshare`` command for ``home`` and capture its output."""
    return subprocess.run(  # noqa: S603
        cli_command(home, *args), capture_output=True, text=True, timeout=timeout, check=False
    )


def init_home(
    home: Home,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    *,
    compute: Mapping[str, Any] | None = None,
    **network: Any,
) -> None:
    """Initialise ``home`` in-process (no CLI round trip) listening on ``listen``.

    ``compute`` sets [compute] keys; other keyword arguments set [network] keys,
    e.g. ``bootstrap=(addr,)``.
    """
    from p2pshare.node.init import initialise  # noqa: PLC0415

    initialise(home, listen=listen, network=network, compute=compute)


def start_all(daemons: Sequence[DaemonProcess], timeout: float = 60.0) -> None:
    """Spawn every daemon first, then wait for each: start-ups overlap."""
    for daemon in daemons:
        daemon.spawn()
    for daemon in daemons:
        daemon.wait_ready(timeout)


def stop_all(daemons: Sequence[DaemonProcess], timeout: float = 30.0) -> None:
    """Stop every daemon at once: one after another, 50 daemons took minutes to stop."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - benchmarks only

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(daemons)))) as pool:
        list(pool.map(lambda daemon: daemon.stop(timeout), daemons))


def wait_announced(home: Home, cid: str, limit: float = 30.0, since: int = 0) -> None:
    """Until the node's status says its announcement of ``cid`` went out at or after
    ``since`` (Unix seconds); announcements are sent in the background after a share,
    a get or a start."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with ControlClient(home) as client:
            shares = client.call("status")["shares"]
        if any(s["cid"] == cid and (s["provided_at"] or -1) >= since for s in shares):
            return
        time.sleep(0.05)
    raise DaemonStartError(f"the daemon of {home.root} did not announce {cid} in {limit:g} s")


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:  # noqa: PTH123
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def write_varied_file(path: os.PathLike[str], size: int, block: int = 1 << 20) -> None:
    """``size`` bytes of random-looking data, cheap to make: one random block, each copy
    numbered so no layer can deduplicate or compress it away."""
    data = os.urandom(block)
    with open(path, "wb") as f:  # noqa: PTH123
        for index in range(size // block):
            f.write(index.to_bytes(8, "little") + data[8:])
        f.write(data[: size % block])
