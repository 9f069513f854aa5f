"""Job outputs on a worker with a small store quota, between real daemons on 127.0.0.1.

Field test 2, row 3: with `quota_bytes = 10485760`, three `flood` jobs of 8 MB output
each left 88 MB in the worker's `content/`, pinned, and `gc` removed nothing.  Now the
outputs count toward the quota, a job whose output cannot fit is refused before it
runs, a fetched output is reclaimed, and none of them shows in the worker's `ls`.
"""

from __future__ import annotations

import json
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pshare.compute.examples import WAT_DIR
from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.identity import NodeKey
from p2pshare.launcher import DaemonProcess, init_home, run_cli
from p2pshare.net.host import running_host
from p2pshare.net.streams import LibP2PStream
from p2pshare.proto.cid import ContentId
from p2pshare.proto.transfer import (
    PROTOCOL_ID,
    ErrorCode,
    ErrorReply,
    GetHave,
    GetManifest,
    Hello,
    Message,
    Role,
    TransferDecoder,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

QUOTA = 10 * 1024 * 1024
FLOOD_OUTPUT = 8_000_000


def cli_json(home: Home, *args: str, timeout: float = 60) -> Any:
    result = run_cli(home, *args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def content_bytes(home: Home) -> int:
    return sum(p.stat().st_size for p in home.content_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    with tempfile.TemporaryDirectory(prefix="p2po-") as name, ExitStack() as stack:
        root = Path(name)
        req_home, worker_home = Home(root / "req"), Home(root / "w")
        init_home(req_home)
        requester = stack.enter_context(DaemonProcess(req_home))
        requester.start()
        offer = {"enabled": True, "slots": 1, "jobs_per_minute": 6000.0}
        init_home(worker_home, bootstrap=(requester.info["addrs"][0],), compute=offer)
        config = worker_home.config_path.read_text()
        config = re.sub(r"^quota_bytes = .*$", f"quota_bytes = {QUOTA}", config, flags=re.M)
        worker_home.config_path.write_text(config)
        worker = stack.enter_context(DaemonProcess(worker_home))
        worker.start()
        for _ in range(100):
            found = cli_json(req_home, "compute", "peers", "--timeout", "2")["workers"]
            if [w["free"] for w in found] == [1]:
                break
        else:
            pytest.fail("the worker was not found in the DHT with a free slot")
        yield requester, worker
        with ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(DaemonProcess.stop, [requester, worker]))
        assert codes == [0, 0]


def stranger_asks(worker: DaemonProcess, cid: str) -> list[Message]:
    """What a fresh identity gets over a raw transfer stream when it asks for ``cid``."""

    async def ask() -> list[Message]:
        async with running_host(NodeKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
            with trio.fail_after(20):
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(worker.info["addrs"][0])))
                raw = await host.new_stream(
                    ID.from_base58(worker.info["peer_id"]), [TProtocol(PROTOCOL_ID)]
                )
                stream = LibP2PStream(raw)
                wanted = ContentId.parse(cid)
                requests: list[Message] = [GetManifest(1, wanted), GetHave(2, wanted, 0, 1)]
                await stream.send_all(
                    encode(Hello(1, Role.CLIENT)) + b"".join(encode(r) for r in requests)
                )
                decoder = TransferDecoder(Role.CLIENT)
                replies: list[Message] = []
                while len(replies) < 1 + len(requests):
                    data = await stream.receive_some()
                    if not data:
                        break
                    decoder.feed(data)
                    while (message := decoder.next_message()) is not None:
                        replies.append(message)
                await stream.reset()
                return replies

    return trio.run(ask)


def flood(requester: DaemonProcess, out: Path, max_output: int) -> Any:
    return run_cli(
        requester.home,
        "compute",
        "run",
        str(WAT_DIR / "flood.wat"),
        "--max-output",
        str(max_output),
        "-o",
        str(out),
        "--json",
        timeout=120,
    )


def test_job_outputs_stay_under_the_quota_and_gc_reclaims_fetched_ones(
    pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    requester, worker = pair
    for index in range(3):
        out = tmp_path / f"flood{index}.txt"
        result = flood(requester, out, FLOOD_OUTPUT)
        assert result.returncode == ExitCode.JOB_FAILED, result.stderr
        assert json.loads(result.stdout)["status"] == "output_limit"
        assert out.stat().st_size == FLOOD_OUTPUT
        assert content_bytes(worker.home) <= QUOTA
    outputs = cli_json(worker.home, "compute", "outputs")["outputs"]
    assert len(outputs) == 1, "the fetched outputs of earlier jobs were reclaimed"
    assert outputs[0]["requesters"] == [requester.info["peer_id"]]
    assert outputs[0]["keep_until"] is None, "the requester fetched it"
    shown = run_cli(worker.home, "compute", "outputs")
    assert shown.stdout.startswith(outputs[0]["cid"]), shown.stderr
    assert f"for {requester.info['peer_id']}  fetched" in shown.stdout
    assert cli_json(worker.home, "ls")["shares"] == []
    assert cli_json(worker.home, "status")["shares"] == [], "not the user's, never announced"
    # Field test 2, row 28: a stranger's raw client got the output's manifest.
    replies = stranger_asks(worker, outputs[0]["cid"])
    assert replies[0] == Hello(1, Role.SERVER)
    assert [(r.req_id, r.code) for r in replies[1:] if isinstance(r, ErrorReply)] == [
        (1, ErrorCode.UNKNOWN_CONTENT),
        (2, ErrorCode.UNKNOWN_CONTENT),
    ]
    assert cli_json(worker.home, "gc")["removed"] == [outputs[0]["cid"]]
    assert content_bytes(worker.home) == 0
    assert cli_json(worker.home, "compute", "outputs")["outputs"] == []


def test_a_job_whose_output_cannot_fit_the_quota_is_refused(
    pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    requester, worker = pair
    out = tmp_path / "big.txt"
    result = flood(requester, out, QUOTA + 1)
    assert result.returncode == ExitCode.FAILED, result.stdout
    assert "(no_space)" in result.stderr
    assert f"no room for {QUOTA + 1} bytes of output" in result.stderr
    assert not out.exists()
    assert content_bytes(worker.home) <= QUOTA
