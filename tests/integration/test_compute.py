"""compute between real daemons on 127.0.0.1: replicas, every sandbox limit, refusals, cancel.

One set of three daemons serves the whole module: ``requester`` (also the bootstrap
node, compute off) and two workers with compute on, one slot each.  Every hostile job
runs on both workers (``--replicas 2``) and is followed by a check that both worker
daemons are still up and idle and serve a wordcount job: a limit that holds by taking
the daemon down does not hold.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.compute.examples import WAT_DIR
from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, cli_command, init_home, run_cli, start_all

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.integration

# The workers' offer: large enough for every job here, small enough to be exceeded.
MAX_WALL = 60
MAX_MEMORY = 256 << 20  # the default, and the default of a job
SMALL_MEMORY = 1 << 20
SMALL_OFFER = ("--max-memory", str(SMALL_MEMORY), "--max-output", "4096")
DEFAULT_OFFER = ("--max-memory", str(MAX_MEMORY), "--max-output", str(64 << 20))
# Ample for wordcount and spin --timeout 1; far below what spin needs to end by fuel then.
BIG_FUEL = 10**12
SMALL_FUEL = 1_000_000
# A wordcount job: ASCII only, so Python's split() agrees with the module on words.
TEXT = "the quick brown fox\n  jumps over\tthe lazy dog\n\nlast line without newline"
EXPECTED_WC = f"{TEXT.count(chr(10))} {len(TEXT.split())} {len(TEXT)}\n"
# How long a cancelled job is left running first, with no progress from its workers.
QUIET = 2.0
# Every wait for a condition polls at this interval, within a deadline.
POLL = 0.1


@dataclass
class Cluster:
    requester: DaemonProcess
    workers: list[DaemonProcess]
    root: Path

    @property
    def worker_ids(self) -> set[str]:
        return {w.info["peer_id"] for w in self.workers}


def wat(name: str) -> str:
    return str(WAT_DIR / f"{name}.wat")


def cli_json(home: Home, *args: str, timeout: float = 60) -> Any:
    result = run_cli(home, *args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(
    what: str, check: Callable[[], bool], *, limit: float = 20.0, interval: float = POLL
) -> None:
    """Poll ``check`` until it holds; fail after ``limit`` seconds (and a bounded count)."""
    deadline = time.monotonic() + limit
    for _ in range(int(limit / interval) + 1):
        if check():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    pytest.fail(f"{what}: not within {limit:g} s")


def offer_status(worker: DaemonProcess) -> dict[str, Any]:
    status = worker.call("compute_offer", {})
    assert isinstance(status, dict)
    return status


def peers(cluster: Cluster) -> dict[str, dict[str, Any]]:
    found = cli_json(cluster.requester.home, "compute", "peers", "--timeout", "2")["workers"]
    return {w["peer_id"]: w for w in found}


def shares(home: Home) -> list[dict[str, Any]]:
    result = cli_json(home, "ls")["shares"]
    assert isinstance(result, list)
    return result


def log_tail(home: Home) -> str:
    """The end of a daemon's log, for failure messages."""
    log = home.root / "daemon.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def run_job(
    cluster: Cluster, module: str, *options: str, out: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``compute run MODULE OPTIONS -o OUT --json`` on the requester."""
    result = run_cli(
        cluster.requester.home,
        "compute",
        "run",
        module,
        *options,
        "-o",
        str(out),
        "--json",
        timeout=timeout,
    )
    if "internal error" in result.stderr:
        pytest.fail(f"{result.stderr}\nrequester log:\n{log_tail(cluster.requester.home)}")
    return result


def run_wordcount(cluster: Cluster, out: Path) -> dict[str, Any]:
    """Run wordcount on both workers; check the verified result, return the report."""
    stdin = cluster.root / "wc-input.txt"
    if not stdin.exists():
        stdin.write_text(TEXT)
    result = run_job(
        cluster, wat("wordcount"), "--stdin", str(stdin), "--replicas", "2", "--force", out=out
    )
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["verified"] is True
    assert report["status"] == "ok"
    assert out.read_text() == EXPECTED_WC
    assert {w["peer_id"] for w in report["workers"]} == cluster.worker_ids
    assert all(w["agrees"] for w in report["workers"])
    return report


def assert_workers_serve(cluster: Cluster, out: Path) -> None:
    """Both worker daemons answer, are idle with their pool up, and run a job correctly."""
    for worker in cluster.workers:
        assert worker.call("status")["peer_id"] == worker.info["peer_id"]
    wait_for(
        "workers idle and ready",
        lambda: all(
            (s := offer_status(w))["ready"] and s["running"] == 0 and s["free"] == 1
            for w in cluster.workers
        ),
        limit=10,
    )
    run_wordcount(cluster, out)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="p2pc-") as name, ExitStack() as stack:
        root = Path(name)
        homes = [Home(root / n) for n in ("req", "w1", "w2")]
        init_home(homes[0])
        requester = stack.enter_context(DaemonProcess(homes[0]))
        requester.start()
        offer = {
            "enabled": True,
            "slots": 1,
            "max_wall": MAX_WALL,
            "jobs_per_minute": 6000.0,
        }
        for home in homes[1:]:
            init_home(home, bootstrap=(requester.info["addrs"][0],), compute=offer)
        workers = [stack.enter_context(DaemonProcess(home)) for home in homes[1:]]
        start_all(workers)
        built = Cluster(requester, workers, root)
        wait_for(
            "both workers found in the DHT, pools ready",
            lambda: {p for p, w in peers(built).items() if w["free"] == 1} == built.worker_ids,
            limit=30,
            interval=0.3,
        )
        yield built
        # Stop all three at once: a daemon takes a few seconds to stop.
        with ThreadPoolExecutor(len(homes)) as pool:
            codes = list(pool.map(DaemonProcess.stop, [requester, *workers]))
        assert codes == [0, 0, 0], [log_tail(h) for h in homes]


def test_replicated_run_agrees(cluster: Cluster, tmp_path: Path) -> None:
    before = shares(cluster.requester.home)
    report = run_wordcount(cluster, tmp_path / "wc.txt")
    assert report["replicas"] == 2
    assert report["dissenters"] == []
    assert report["exit_code"] == 0
    assert report["output"] == str(tmp_path / "wc.txt")
    assert report["output_size"] == len(EXPECTED_WC)
    assert report["output_from"] in cluster.worker_ids
    # Neither worker held the module or stdin: both fetched them from the requester.
    assert report["input_bytes_moved"] > len(TEXT)
    assert all(w["fetched_bytes"] > len(TEXT) for w in report["workers"])
    assert all(w["state"] == "done" and w["status"] == "ok" for w in report["workers"])
    assert len({w["digest"] for w in report["workers"]}) == 1
    # The job's module and stdin were shared for the job's duration only.
    assert shares(cluster.requester.home) == before


def test_output_gets_the_mode_of_the_commands_umask(cluster: Cluster, tmp_path: Path) -> None:
    """Field test #14: 0666 & ~umask of the command, not of the daemon (the test's umask)."""
    stdin = tmp_path / "in.txt"
    stdin.write_text(TEXT)
    out = tmp_path / "wc.txt"
    command = ("compute", "run", wat("wordcount"), "--stdin", str(stdin), "-o", str(out), "--json")
    result = subprocess.run(
        cli_command(cluster.requester.home, *command),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0o007,
    )
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert out.read_text() == EXPECTED_WC
    assert stat.S_IMODE(out.stat().st_mode) == 0o660


@dataclass(frozen=True)
class LimitCase:
    module: str
    options: tuple[str, ...]
    status: str
    exit_code: int
    check_output: Callable[[bytes], None] | None = None


def _flood_output(output: bytes) -> None:
    # stdout is kept up to the limit exactly, then the write that would pass it traps.
    assert output == b"y\n" * 500


def _escape_output(output: bytes) -> None:
    # "<path> <errno>" per attempt; an open that worked would be errno 000 and a file dump.
    lines = output.decode().splitlines()
    attempts = ["../../etc/passwd", "/etc/passwd", "sub/../../../etc/passwd", "..", "pwned.txt"]
    assert [line.rsplit(" ", 1)[0] for line in lines] == attempts
    errnos = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(errno != 0 for errno in errnos), lines
    assert b"root:" not in output


def _sleep_output(output: bytes) -> None:
    assert output == b"poll_oneoff 052\n"  # ENOSYS at once


LIMITS = {
    "spin-out-of-fuel": LimitCase(
        "spin", ("--fuel", str(SMALL_FUEL)), "out_of_fuel", ExitCode.JOB_FAILED
    ),
    "spin-wall-clock": LimitCase(
        "spin", ("--fuel", str(BIG_FUEL), "--timeout", "1"), "timeout", ExitCode.JOB_FAILED
    ),
    "membomb-memory": LimitCase(
        "membomb", ("--memory", str(1 << 20)), "memory_limit", ExitCode.JOB_FAILED
    ),
    "flood-output": LimitCase(
        "flood", ("--max-output", "1000"), "output_limit", ExitCode.JOB_FAILED, _flood_output
    ),
    "recurse-stack": LimitCase("recurse", (), "stack_overflow", ExitCode.JOB_FAILED),
    "escape-path": LimitCase("escape", (), "ok", ExitCode.OK, _escape_output),
    "sleep-poll-oneoff": LimitCase(
        "sleep", ("--timeout", str(MAX_WALL)), "ok", ExitCode.OK, _sleep_output
    ),
}


@pytest.mark.parametrize("case", LIMITS.values(), ids=LIMITS.keys())
def test_limit_holds_and_worker_serves_next_job(
    cluster: Cluster, tmp_path: Path, case: LimitCase
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    # Far below the job's wall limit: a job that blocked in the host would fail here.
    result = run_job(
        cluster, wat(case.module), *case.options, "--replicas", "2", out=out, timeout=30
    )
    elapsed = time.monotonic() - started
    assert result.returncode == case.exit_code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    # Timeouts are never evidence: two of them agreeing verify nothing.
    evidence = case.status != "timeout"
    assert report["verified"] is evidence
    assert report["status"] == case.status
    assert {w["peer_id"] for w in report["workers"]} == cluster.worker_ids
    assert all(w["status"] == case.status for w in report["workers"])
    assert all(w["agrees"] is evidence for w in report["workers"])
    if case.status == "out_of_fuel":
        assert all(0 < w["fuel_used"] <= SMALL_FUEL for w in report["workers"])
    if case.check_output is not None:
        case.check_output(out.read_bytes())
    else:
        # A failed job that printed nothing leaves no empty output file.
        assert not out.exists()
    if case.module == "sleep":
        assert elapsed < 15
    assert_workers_serve(cluster, tmp_path / "wc.txt")


def test_a_module_without_start_is_refused_with_its_reason_and_writes_no_output(
    cluster: Cluster, tmp_path: Path
) -> None:
    module = tmp_path / "nostart.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    out = tmp_path / "out"
    result = run_job(cluster, str(module), "--replicas", "2", out=out)
    assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
    assert "(invalid_module): the module has no _start function" in result.stderr
    assert not out.exists()
    assert_workers_serve(cluster, tmp_path / "wc.txt")


def test_forbidden_import_is_refused_by_name(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done_before = [offer_status(w)["jobs_done"] for w in cluster.workers]
    result = run_job(cluster, wat("socket"), "--replicas", "2", out=out)
    assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: the job was refused: "), result.stderr
    assert "forbidden import wasi_snapshot_preview1.sock_open;" in result.stderr
    assert not out.exists()
    # Refused before it ran: no worker produced a receipt.
    assert [offer_status(w)["jobs_done"] for w in cluster.workers] == done_before
    assert_workers_serve(cluster, tmp_path / "wc.txt")


def test_refusals_are_errors_and_leave_nothing_behind(cluster: Cluster, tmp_path: Path) -> None:
    home = cluster.requester.home
    before = shares(home)
    stdin = tmp_path / "in.txt"
    stdin.write_text(TEXT)
    not_wasm = tmp_path / "x.wasm"
    not_wasm.write_text("this is a text file, not a module\n")
    out = tmp_path / "out"
    over_wall = str(MAX_WALL + 1)
    cases: list[tuple[list[str], str]] = [
        ([str(not_wasm)], "is not WebAssembly"),
        ([wat("wordcount"), "--timeout", over_wall], "offers less than the job asks: wall"),
        ([wat("wordcount"), "--memory", str(MAX_MEMORY + 1)], "offers less than the job asks"),
        ([wat("wordcount"), "--memory", str(8 << 30)], "invalid job limits"),
        ([wat("wordcount"), "--replicas", "3"], "found 2 worker(s) able to take the job, 3 needed"),
    ]
    for args, message in cases:
        result = run_job(cluster, *args, "--stdin", str(stdin), out=out)
        assert result.returncode == ExitCode.FAILED, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: ")
        assert message in result.stderr, (args, result.stderr)
        assert not out.exists()
        assert shares(home) == before, args

    out.write_text("precious")
    result = run_job(cluster, wat("wordcount"), "--stdin", str(stdin), out=out)
    assert result.returncode == ExitCode.FAILED
    assert "exists" in result.stderr
    assert "--force" in result.stderr
    assert out.read_text() == "precious"
    assert shares(home) == before
    # Nothing reached the workers.
    assert all(offer_status(w)["running"] == 0 for w in cluster.workers)


def test_an_output_onto_a_directory_is_refused_and_nothing_is_left_behind(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Field test #13: `-o EXISTING_DIR --force` gave `internal error in the daemon` and
    left a stray `.NAME.job` file; a file is replaced only with --force, and atomically."""
    stdin = tmp_path / "notes.txt"
    stdin.write_text(TEXT)
    victim = tmp_path / "victim2"
    (victim / "sub").mkdir(parents=True)
    for force in ((), ("--force",)):
        result = run_job(cluster, wat("wordcount"), "--stdin", str(stdin), *force, out=victim)
        assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
        assert result.stderr == (
            f"error: {victim} is an existing directory, which p2pshare never replaces or "
            f"writes into (not even with --force); choose a new path for -o, such as "
            f"{victim}/NAME\n"
        )
    assert [p.name for p in victim.iterdir()] == ["sub"]

    out = tmp_path / "counts.txt"
    out.write_text("old")
    result = run_job(cluster, wat("wordcount"), "--stdin", str(stdin), "--force", out=out)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert out.read_text() == EXPECTED_WC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.txt", "notes.txt", "victim2"]


def test_an_output_into_a_directory_with_a_slash_is_named_after_the_module_never_the_home(
    cluster: Cluster, tmp_path: Path
) -> None:
    stdin = tmp_path / "notes.txt"
    stdin.write_text(TEXT)
    home = cluster.requester.home
    key = home.key_path.read_bytes()

    def run_into(out: str, *options: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            home, "compute", "run", wat("wordcount"), "--stdin", str(stdin), "-o", out, *options
        )

    missing = tmp_path / "nope"
    result = run_into(f"{missing}/")
    assert result.returncode == ExitCode.FAILED
    assert result.stderr.startswith(f"error: {missing}/ names a directory")
    for out in (str(home.key_path), f"{home.root}/"):
        result = run_into(out, "--force")
        assert result.returncode == ExitCode.FAILED
        assert "inside this node's home" in result.stderr
    assert home.key_path.read_bytes() == key
    assert not list(home.root.glob(".node.key*"))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    result = run_into(f"{outputs}/")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert (outputs / "wordcount.out").read_text() == EXPECTED_WC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "outputs"]


def test_peers_and_switching_an_offer_off_and_on(cluster: Cluster, tmp_path: Path) -> None:
    found = peers(cluster)
    assert set(found) == cluster.worker_ids
    for offer in found.values():
        assert offer["slots"] == 1
        assert offer["free"] == 1
        assert offer["max_wall"] == MAX_WALL
        assert offer["max_memory"] == MAX_MEMORY
        assert offer["speed_fuel_per_s"] > 0
        assert offer["expires"] > time.time()
    off_worker, on_worker = cluster.workers
    stdin = tmp_path / "in.txt"
    stdin.write_text(TEXT)
    shown = cli_json(off_worker.home, "compute", "offer")
    assert shown["enabled"] is True
    assert shown["ready"] is True
    assert shown["running"] == 0

    try:
        shown = cli_json(off_worker.home, "compute", "offer", "--off")
        assert shown["enabled"] is False
        assert shown["free"] == 0
        # Withdrawn: no longer listed (not even as "0/1 free" or unreachable).
        listed = cli_json(cluster.requester.home, "compute", "peers", "--timeout", "2")
        assert [w["peer_id"] for w in listed["workers"]] == [on_worker.info["peer_id"]]
        assert listed["unreachable"] == []
        result = run_job(
            cluster, wat("wordcount"), "--stdin", str(stdin), "--replicas", "2", out=tmp_path / "o"
        )
        assert result.returncode == ExitCode.FAILED
        assert "found 1 worker(s) able to take the job, 2 needed" in result.stderr
        assert "only 1 worker(s) found offering compute" in result.stderr
        assert off_worker.info["peer_id"] not in result.stderr
    finally:
        # On again, with limits below a job's defaults: the pool restarts within them.
        shown = cli_json(off_worker.home, "compute", "offer", "--on", *SMALL_OFFER)
    try:
        assert shown["enabled"] is True
        assert shown["max_memory"] == SMALL_MEMORY
        wait_for("the worker pool back up", lambda: bool(offer_status(off_worker)["ready"]))
        offer = peers(cluster)[off_worker.info["peer_id"]]
        assert (offer["free"], offer["max_memory"], offer["max_output"]) == (1, SMALL_MEMORY, 4096)
        small = ("--memory", str(SMALL_MEMORY), "--max-output", "4096", "--replicas", "2")
        result = run_job(
            cluster, wat("wordcount"), "--stdin", str(stdin), *small, out=tmp_path / "s"
        )
        assert result.returncode == ExitCode.OK, result.stdout + result.stderr
        assert (tmp_path / "s").read_text() == EXPECTED_WC
    finally:
        cli_json(off_worker.home, "compute", "offer", *DEFAULT_OFFER)
    wait_for("the worker pool back up", lambda: bool(offer_status(off_worker)["ready"]))
    assert offer_status(off_worker)["max_memory"] == MAX_MEMORY
    assert_workers_serve(cluster, tmp_path / "wc.txt")


def test_interrupting_run_cancels_the_job_on_every_worker(cluster: Cluster, tmp_path: Path) -> None:
    before = shares(cluster.requester.home)
    out = tmp_path / "spin.out"
    argv = cli_command(
        cluster.requester.home,
        "compute",
        "run",
        wat("spin"),
        "--fuel",
        str(BIG_FUEL),
        "--timeout",
        "30",
        "--replicas",
        "2",
        "-o",
        str(out),
        "--json",
    )
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            wait_for(
                "the job running on both workers",
                lambda: all(offer_status(w)["running"] == 1 for w in cluster.workers),
                limit=20,
            )
            # Not waiting for a condition: past this pause the job is quiet (its workers
            # sent their last progress), and the cancel must not wait for the next event.
            time.sleep(QUIET)
            assert process.poll() is None
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 130, stdout + stderr
    assert "cancelled" in stderr
    try:
        wait_for(
            "the cancel reaching both workers",
            lambda: all(offer_status(w)["running"] == 0 for w in cluster.workers),
            limit=5,
        )
    except pytest.fail.Exception:
        logs = [log_tail(d.home) for d in (cluster.requester, *cluster.workers)]
        pytest.fail("\n\n".join([str([offer_status(w) for w in cluster.workers]), *logs]))
    # Far sooner than the job's 30 s wall limit would have ended it.
    assert time.monotonic() - interrupted < 10
    assert not out.exists()
    assert shares(cluster.requester.home) == before
    assert_workers_serve(cluster, tmp_path / "wc.txt")


def test_an_input_larger_than_the_worker_takes_is_refused_as_oversize(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The worker learns the size from the manifest (transfer's ContentTooLargeError)
    and refuses the job with compute's own code, ``oversize``: a refusal about the job,
    so no other worker is tried and the run fails at once."""
    holder, worker = cluster.workers
    big = tmp_path / "big.txt"
    big.write_text(TEXT * 200)
    shared = cli_json(holder.home, "share", str(big))
    # The holder would be ranked first and refuse from its own store: take it out.
    cli_json(holder.home, "compute", "offer", "--off")
    try:
        # Room for the module (a few hundred bytes), not for the input.
        cli_json(worker.home, "compute", "offer", "--max-input", "4096")
        result = run_job(cluster, wat("wordcount"), "--stdin", shared["ticket"], out=tmp_path / "o")
        assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
        assert "(oversize)" in result.stderr, result.stderr + log_tail(worker.home)
        assert "more than the" in result.stderr
        assert not (tmp_path / "o").exists()
    finally:
        cli_json(worker.home, "compute", "offer", "--max-input", str(1024**3))
        cli_json(holder.home, "compute", "offer", "--on")
        cli_json(holder.home, "unshare", shared["cid"])
    wait_for("both pools back up", lambda: all(offer_status(n)["ready"] for n in cluster.workers))
    assert_workers_serve(cluster, tmp_path / "wc.txt")
