"""``p2pshare demo``: three real daemons on 127.0.0.1 share, find and fetch a file.

node0 is a bootstrap node. node1 joins through it and shares a generated file.
node2 joins afterwards, knowing only node0, finds the file through the DHT, fetches
it by content ID and checks it byte for byte.  Then node2 runs a WebAssembly job
(``wordcount``) over that file on two workers, node0 and node1, which offer their
compute: both run it in their sandbox, their signed receipts must agree, and the
result must match the count made here.  Between the two, node1 shares a note
privately to node2: node0 fetching it is refused, node2 reads it.  Everything
runs in temporary homes that are removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pshare.compute.examples import WAT_DIR
from p2pshare.control.client import ControlClient
from p2pshare.errors import ControlCallError, UserError
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, start_all

if TYPE_CHECKING:
    from collections.abc import Callable

FILE_SIZE = 32 << 20
# node0 and node1 offer compute: one slot each, the defaults otherwise.
WORKER = {"enabled": True, "slots": 1}
WORKER_WAIT = 30.0


class DemoFailedError(UserError):
    """The demo's own check failed (the fetched file differs, or nothing was found)."""


def _call(home: Home, method: str, params: dict[str, Any] | None = None) -> Any:
    with ControlClient(home, timeout=120) as client:
        return client.call(method, params)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_demo(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="p2pshare-demo-"))
    report: dict[str, Any] = {"workdir": str(root)}
    try:
        with contextlib.ExitStack() as stack:
            homes = [Home(root / f"node{i}") for i in range(3)]
            boot, sharer = _start_first_two(stack, homes, report, say)
            data, cid = _share(root, homes[1], report, say)
            init_home(homes[2], bootstrap=(boot.info["addrs"][0],))
            fetcher = stack.enter_context(DaemonProcess(homes[2]))
            start_all([fetcher])
            peers = {p["peer_id"] for p in _call(homes[2], "peers")["peers"]}
            report["fetcher_connected_to_sharer_before_find"] = sharer.info["peer_id"] in peers
            # Its join lookup (of its own ID) may have met node1 already; the find below
            # still asks the DHT who provides the content.
            say(
                f"node2 {fetcher.info['peer_id']} joined knowing only node0; after looking "
                f"up its neighbours it is connected to {len(peers)} peer(s)"
            )
            _find_and_fetch(root, homes[2], sharer, data, cid, report, say)
            _private_share(root, homes, fetcher.info["peer_id"], report, say)
            _compute(root, homes[2], [boot, sharer, fetcher], data, cid, report, say)
            t0 = time.monotonic()
            for daemon in (fetcher, sharer, boot):
                daemon.stop()
            report["stop_s"] = round(time.monotonic() - t0, 3)
    except UserError as exc:
        # The daemons' logs are what explains a failure: keep them, not the data files.
        for name in ("demo-data.bin", "fetched.bin"):
            (root / name).unlink(missing_ok=True)
        raise DemoFailedError(f"{exc}; the nodes' homes and logs are kept in {root}") from exc
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    shutil.rmtree(root, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - began, 3)
    say(f"demo passed in {report['total_s']:.2f} s; temporary homes removed")
    return report


def _start_first_two(
    stack: contextlib.ExitStack,
    homes: list[Home],
    report: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[DaemonProcess, DaemonProcess]:
    t0 = time.monotonic()
    init_home(homes[0], compute=WORKER)
    boot = stack.enter_context(DaemonProcess(homes[0]))
    boot.start()
    init_home(homes[1], compute=WORKER, bootstrap=(boot.info["addrs"][0],))
    sharer = stack.enter_context(DaemonProcess(homes[1]))
    start_all([sharer])
    report["start_s"] = round(time.monotonic() - t0, 3)
    say(
        f"node0 {boot.info['peer_id']} (bootstrap) and node1 {sharer.info['peer_id']} "
        f"started in {report['start_s']:.2f} s"
    )
    return boot, sharer


def _share(
    root: Path, home: Home, report: dict[str, Any], say: Callable[[str], None]
) -> tuple[Path, str]:
    data = root / "demo-data.bin"
    data.write_bytes(os.urandom(FILE_SIZE))
    t0 = time.monotonic()
    shared = _call(home, "share", {"path": str(data), "name": "demo-data.bin"})
    report["share_s"] = round(time.monotonic() - t0, 3)
    report["cid"] = shared["cid"]
    say(f"node1 shared {FILE_SIZE >> 20} MiB as {shared['cid']} in {report['share_s']:.2f} s")
    return data, str(shared["cid"])


def _find_and_fetch(
    root: Path,
    home: Home,
    sharer: DaemonProcess,
    data: Path,
    cid: str,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    t0 = time.monotonic()
    found = _call(home, "find", {"cid": cid, "timeout": 10})
    report["find_s"] = round(time.monotonic() - t0, 3)
    providers = [p["peer_id"] for p in found["providers"]]
    if sharer.info["peer_id"] not in providers:
        raise DemoFailedError(f"node2 did not find node1 as a provider (found {providers})")
    say(f"node2 found node1 through the DHT in {report['find_s'] * 1000:.0f} ms")
    out = root / "fetched.bin"
    fetched = _call(home, "get", {"ref": cid, "dest": str(out)})
    report["get_s"] = fetched["elapsed_s"]
    report["get_mb_s"] = round(FILE_SIZE / fetched["elapsed_s"] / 1e6, 1)
    if _sha256(out) != _sha256(data):
        raise DemoFailedError("the fetched file differs from the shared one")
    report["verified"] = True
    say(
        f"node2 fetched and verified it in {report['get_s']:.2f} s "
        f"({report['get_mb_s']:.1f} MB/s); the bytes match"
    )


PRIVATE_NOTE = b"only node2 can read this\n"


def _private_share(
    root: Path,
    homes: list[Home],
    recipient: str,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    note = root / "note.txt"
    note.write_bytes(PRIVATE_NOTE)
    # Anyone may seed it, so node0 gets the ciphertext's manifest and learns it cannot read it.
    params = {"path": str(note), "to": [recipient], "anyone_may_seed": True}
    shared = _call(homes[1], "share", params)
    cid = shared["ticket"]
    try:
        _call(homes[0], "get", {"ref": cid, "dest": str(root / "node0-note.txt")})
    except ControlCallError as exc:
        say(f"node0 (not named) was refused: {exc}")
    else:
        raise DemoFailedError("node0 could read a private share not sealed to it")
    out = root / "node2-note.txt"
    _call(homes[2], "get", {"ref": cid, "dest": str(out)})
    if out.read_bytes() != PRIVATE_NOTE:
        raise DemoFailedError("node2 did not get the private note it was sent")
    report["private_share"] = True
    say(f"node1 shared a note privately to node2 ({shared['cid']}); node2 read it")


def _wordcount(data: Path) -> str:
    """What ``wordcount.wat`` prints, computed here: lines, words (runs of bytes
    between ASCII whitespace) and bytes."""
    content = data.read_bytes()
    lines = content.count(b"\n")
    return f"{lines} {len(content.split())} {len(content)}\n"


def _wait_for_workers(home: Home, count: int) -> None:
    deadline = time.monotonic() + WORKER_WAIT
    while time.monotonic() < deadline:
        found = _call(home, "compute_peers", {"timeout": 2})["workers"]
        if sum(1 for w in found if w["free"]) >= count:
            return
        time.sleep(0.2)
    raise DemoFailedError(f"fewer than {count} compute workers were ready in {WORKER_WAIT:g} s")


def _compute(
    root: Path,
    home: Home,
    nodes: list[DaemonProcess],
    data: Path,
    cid: str,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    _wait_for_workers(home, 2)
    out = root / "wordcount.txt"
    t0 = time.monotonic()
    result = _call(
        home,
        "compute_run",
        {
            "module": str(WAT_DIR / "wordcount.wat"),
            "stdin": cid,
            "replicas": 2,
            "dest": str(out),
        },
    )
    report["compute_s"] = round(time.monotonic() - t0, 3)
    report["compute_verified"] = result["verified"]
    report["compute_input_bytes_moved"] = result["input_bytes_moved"]
    answer = out.read_text(encoding="ascii")
    if not result["verified"] or result["status"] != "ok":
        raise DemoFailedError(f"the compute job was not verified: {result}")
    if answer != _wordcount(data):
        raise DemoFailedError(f"the workers agree on {answer!r}, which is wrong")
    names = {node.info["peer_id"]: f"node{i}" for i, node in enumerate(nodes)}
    fetched = ", ".join(
        f"{names.get(w['peer_id'], w['peer_id'])} {w['fetched_bytes'] / 2**20:.1f} MiB"
        for w in result["workers"]
    )
    say(
        f"node2 ran wordcount over it on two workers in {report['compute_s']:.2f} s: both "
        f"signed receipts agree on {answer.strip()!r} (lines words bytes), as counted here; "
        f"input fetched by each worker: {fetched} (a worker holding the file reads it locally)"
    )
