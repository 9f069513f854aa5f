"""get between real daemons on 127.0.0.1: ticket, DHT, multi-source, resume, refusals."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ExitCode
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, cli_command, init_home, run_cli, start_all
from tests.integration.cluster import bootstrapped, cli_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
MIB = 1 << 20
# 4 MB/s: a get of a few MiB takes seconds, time enough to interrupt it midway.
SLOW_UPLOAD = ("--upload-rate", "4000000")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture
def nodes(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    """Four daemons; node0 is the bootstrap node of the others."""
    yield from bootstrapped(short_tmp, 4)


def test_get_by_ticket_and_by_cid_through_the_dht(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    seeder, getter, other = nodes[1], nodes[2], nodes[3]
    data = make_file(tmp_path / "video.bin", 5 * MIB + 123)
    shared = cli_json(seeder.home, "share", str(data))
    out = tmp_path / "by-ticket.bin"
    report = cli_json(getter.home, "get", shared["ticket"], "-o", str(out))
    assert digest(out) == digest(data)
    assert report["size"] == data.stat().st_size
    assert report["peers"] == [seeder.info["peer_id"]]
    assert not list(tmp_path.glob(".*p2pshare-partial"))

    by_cid = tmp_path / "by-cid.bin"
    report = cli_json(other.home, "get", shared["cid"], "-o", str(by_cid))
    assert digest(by_cid) == digest(data)
    # The getter re-serves what it downloaded: now two sources are known.
    providers = cli_json(nodes[0].home, "find", shared["cid"])["providers"]
    assert len(providers) >= 2


def test_directory_share_is_materialised(nodes: list[DaemonProcess], tmp_path: Path) -> None:
    tree = tmp_path / "album"
    (tree / "disc 1").mkdir(parents=True)
    make_file(tree / "disc 1" / "track.flac", 3 * MIB)
    (tree / "notes.txt").write_text("liner notes\n")
    (tree / "empty").write_bytes(b"")
    shared = cli_json(nodes[1].home, "share", str(tree))
    out = tmp_path / "copy"
    cli_json(nodes[2].home, "get", shared["ticket"], "-o", str(out))
    for rel in ("disc 1/track.flac", "notes.txt", "empty"):
        assert digest(out / rel) == digest(tree / rel)


def test_multi_source_download(nodes: list[DaemonProcess], tmp_path: Path) -> None:
    boot, seeder, second, getter = nodes
    data = make_file(tmp_path / "big.bin", 12 * MIB)
    shared = cli_json(seeder.home, "share", str(data))
    cli_json(second.home, "get", shared["ticket"], "-o", str(tmp_path / "second.bin"))
    cli_json(boot.home, "get", shared["ticket"], "-o", str(tmp_path / "boot.bin"))
    out = tmp_path / "multi.bin"
    report = cli_json(getter.home, "get", shared["cid"], "-o", str(out))
    assert digest(out) == digest(data)
    assert len(report["peers"]) == 3
    assert report["requested_bytes"] >= data.stat().st_size


def test_existing_destination_is_refused(nodes: list[DaemonProcess], tmp_path: Path) -> None:
    data = make_file(tmp_path / "a.bin", 1000)
    shared = cli_json(nodes[1].home, "share", str(data))
    out = tmp_path / "exists.bin"
    out.write_bytes(b"precious")
    result = run_cli(nodes[2].home, "get", shared["ticket"], "-o", str(out))
    assert result.returncode == ExitCode.FAILED
    assert result.stderr == f"error: {out} already exists; use --force to replace it\n"
    assert out.read_bytes() == b"precious"
    cli_json(nodes[2].home, "get", shared["ticket"], "-o", str(out), "--force")
    assert out.read_bytes() == data.read_bytes()


def test_unknown_content_and_bad_reference(nodes: list[DaemonProcess], tmp_path: Path) -> None:
    missing = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"
    result = run_cli(nodes[2].home, "get", missing, "-o", str(tmp_path / "x"), timeout=120)
    assert result.returncode == ExitCode.FAILED
    assert result.stderr.startswith(f"error: no providers found for {missing}")
    assert "typo (content IDs carry no checksum)" in result.stderr
    assert result.stderr.count("\n") == 1
    upper = run_cli(nodes[2].home, "get", missing.upper(), "-o", str(tmp_path / "x"))
    assert upper.stderr.startswith(f"error: no providers found for {missing}"), "B is base32upper"
    bad = run_cli(nodes[2].home, "get", "p2ps1garbage", "-o", str(tmp_path / "y"))
    assert bad.returncode == ExitCode.USAGE
    assert bad.stderr.startswith("error: this p2pshare ticket is")


def verified_chunks(home: Home, cid: str) -> int:
    with sqlite3.connect(f"file:{home.catalog_path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT verified FROM downloads WHERE cid = ?", (cid,)).fetchone()
    if row is None:
        return 0
    return sum(bin(b).count("1") for b in row[0])


def downloads(home: Home) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = cli_json(home, "downloads")["downloads"]
    return result


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def init_homes(root: Path, *names: str) -> list[Home]:
    """Initialised homes under ``root`` that know no other node."""
    homes = [Home(root / name) for name in names]
    for home in homes:
        init_home(home)
    return homes


@contextmanager
def slow_seeder(home: Home, data: Path) -> Iterator[dict[str, Any]]:
    """A daemon sharing ``data`` at the SLOW_UPLOAD rate; yields the share's JSON."""
    with DaemonProcess(home, args=SLOW_UPLOAD) as seeder:
        seeder.start()
        yield cli_json(home, "share", str(data))


def test_daemon_resumes_after_kill_9_without_get_and_fetches_no_chunk_twice(
    short_tmp: Path, tmp_path: Path
) -> None:
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "slow.bin", 24 * MIB)
    out = tmp_path / "resumed.bin"
    # The download takes about six seconds, time enough to kill it midway.
    with slow_seeder(seeder_home, data) as shared:
        getter = DaemonProcess(getter_home)
        getter.start()
        get = subprocess.Popen(
            cli_command(getter_home, "get", shared["ticket"], "-o", str(out), "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: verified_chunks(getter_home, shared["cid"]) >= 4, "4 verified chunks")
        getter.kill()
        get.communicate(timeout=30)
        done_before = verified_chunks(getter_home, shared["cid"])
        assert 4 <= done_before < 24, "killed in the middle"
        assert not out.exists()
        with DaemonProcess(getter_home) as again:
            again.start()
            # No get: the daemon resumes the download on its own, from the ticket's
            # provider (the getter knows no other peer and has no DHT to ask).
            wait_for(out.exists, "the resumed download to complete")
            assert digest(out) == digest(data)
            wait_for(lambda: downloads(getter_home) == [], "the download record to go")
            # The same get afterwards reports the download the daemon finished.
            report = cli_json(getter_home, "get", shared["ticket"], "-o", str(out))
        assert report["resumed_chunks"] == done_before
        assert report["requested_bytes"] == data.stat().st_size - done_before * MIB
        assert not list(tmp_path.glob(".*p2pshare-partial"))


def ctrl_c_get(getter_home: Home, ticket: str, out: Path, cid: str) -> int:
    """Start a get, Ctrl-C it after two verified chunks; the chunks verified once paused."""
    get = subprocess.Popen(
        cli_command(getter_home, "get", ticket, "-o", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: verified_chunks(getter_home, cid) >= 2, "2 verified chunks")
    get.send_signal(signal.SIGINT)
    _, stderr = get.communicate(timeout=30)
    assert get.returncode == 130, stderr
    assert b"the download is paused" in stderr
    wait_for(lambda: downloads(getter_home)[0]["state"] == "paused", "the download to pause")
    assert not out.exists()
    return verified_chunks(getter_home, cid)


def test_ctrl_c_pauses_then_get_again_completes(short_tmp: Path, tmp_path: Path) -> None:
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "slow.bin", 16 * MIB)
    out = tmp_path / "after-ctrl-c.bin"
    with (
        DaemonProcess(seeder_home, args=SLOW_UPLOAD) as seeder,
        DaemonProcess(getter_home) as getter,
    ):
        start_all([seeder, getter])
        shared = cli_json(seeder_home, "share", str(data))
        paused_at = ctrl_c_get(getter_home, shared["ticket"], out, shared["cid"])
        [entry] = downloads(getter_home)
        assert entry["verified_chunks"] == paused_at
        assert (entry["destination"], entry["chunks"]) == (str(out), 16)
        report = cli_json(getter_home, "get", shared["ticket"], "-o", str(out))
        assert digest(out) == digest(data)
        assert report["resumed_chunks"] == paused_at
        assert downloads(getter_home) == []


def test_paused_download_stays_paused_across_restarts_until_cancelled(
    short_tmp: Path, tmp_path: Path
) -> None:
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "slow.bin", 16 * MIB)
    out = tmp_path / "paused.bin"
    with slow_seeder(seeder_home, data) as shared:
        with DaemonProcess(getter_home) as getter:
            getter.start()
            paused_at = ctrl_c_get(getter_home, shared["ticket"], out, shared["cid"])
        with DaemonProcess(getter_home) as getter:
            getter.start()
            [entry] = downloads(getter_home)
            assert (entry["state"], entry["verified_chunks"]) == ("paused", paused_at)
            human = run_cli(getter_home, "downloads").stdout
            assert human.startswith(f"{shared['cid']}  paused ")
            assert "% of 16.0 MiB" in human
            assert human.rstrip().endswith(str(out))
            partial = out.with_name(f".{out.name}.p2pshare-partial")
            assert partial.exists()
            cancelled = cli_json(getter_home, "downloads", "cancel", shared["cid"])
            assert cancelled["removed_partial"] is True
            assert not partial.exists()
            assert downloads(getter_home) == []
            again = run_cli(getter_home, "downloads", "cancel", shared["cid"])
            assert again.returncode == ExitCode.FAILED
            assert again.stderr.startswith("error: there is no unfinished download of")
        assert verified_chunks(getter_home, shared["cid"]) == 0


def test_data_channel_is_used_and_libp2p_is_the_fallback(short_tmp: Path, tmp_path: Path) -> None:
    names = ("fast", "plain", "getter")
    homes = dict(zip(names, init_homes(short_tmp, *names), strict=True))
    plain_config = homes["plain"].config_path
    text = plain_config.read_text()
    assert "data_channel = true" in text
    plain_config.write_text(text.replace("data_channel = true", "data_channel = false"))
    data = make_file(tmp_path / "d.bin", 6 * MIB)
    with ExitStack() as stack:
        daemons = {n: stack.enter_context(DaemonProcess(h)) for n, h in homes.items()}
        start_all(list(daemons.values()))
        for name in ("fast", "plain"):
            shared = cli_json(homes[name], "share", str(data))
            out = tmp_path / f"from-{name}.bin"
            report = cli_json(homes["getter"], "get", shared["ticket"], "-o", str(out))
            assert digest(out) == digest(data)
            path = report["paths"][daemons[name].info["peer_id"]]
            assert path == ("data-channel" if name == "fast" else "libp2p")


def test_a_partial_downloader_serves_a_third_peer(short_tmp: Path, tmp_path: Path) -> None:
    """A seeds slowly; B, still downloading, announces the chunks it holds; C, started by
    content ID while B is partial, gets chunks from B as well as from A."""
    homes = {name: Home(short_tmp / name) for name in ("a", "b", "c")}
    init_home(homes["a"])
    data = make_file(tmp_path / "slow.bin", 24 * MIB)
    out_b, out_c = tmp_path / "b.bin", tmp_path / "c.bin"
    # 1 MB/s: B alone needs about 25 s, so it would still run at the next lookup and
    # announces itself partial (swarm.slow), and C has time to find it so.
    with ExitStack() as stack:
        seeder = stack.enter_context(DaemonProcess(homes["a"], args=["--upload-rate", "1000000"]))
        seeder.start()
        for name in ("b", "c"):
            init_home(homes[name], bootstrap=(seeder.info["addrs"][0],))
        partial = stack.enter_context(DaemonProcess(homes["b"]))
        third = stack.enter_context(DaemonProcess(homes["c"]))
        start_all([partial, third])
        shared = cli_json(homes["a"], "share", str(data))
        get_b = subprocess.Popen(
            cli_command(homes["b"], "get", shared["ticket"], "-o", str(out_b), "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        b_id = partial.info["peer_id"]

        def b_is_found() -> bool:
            found = cli_json(homes["c"], "find", shared["cid"], "--timeout", "2")
            return b_id in {p["peer_id"] for p in found["providers"]}

        wait_for(b_is_found, "B's partial download to be announced")
        assert not out_b.exists(), "B announced while still downloading"
        report = cli_json(homes["c"], "get", shared["cid"], "-o", str(out_c))
        assert digest(out_c) == digest(data)
        assert b_id in report["peers"]
        assert report["chunks_from"][b_id] > 0, report
        _, stderr = get_b.communicate(timeout=120)
        assert get_b.returncode == 0, stderr
        assert digest(out_b) == digest(data)


def test_get_never_replaces_an_existing_directory(short_tmp: Path, tmp_path: Path) -> None:
    """Field test #1: the old hint said to use --force, which then deleted the whole tree;
    `-o . --force` deleted the working directory."""
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "small.bin", 30)
    with DaemonProcess(seeder_home) as seeder, DaemonProcess(getter_home) as getter:
        start_all([seeder, getter])
        shared = cli_json(seeder_home, "share", str(data))
        victim = tmp_path / "victim"
        (victim / "sub").mkdir(parents=True)
        (victim / "important.doc").write_text("precious\n")
        refusal = (
            f"error: {victim} is an existing directory, which p2pshare never replaces or "
            f"writes into (not even with --force); choose a new path for -o, such as "
            f"{victim}/NAME\n"
        )
        for force in ((), ("--force",)):
            result = run_cli(getter_home, "get", shared["ticket"], "-o", str(victim), *force)
            assert (result.returncode, result.stderr) == (ExitCode.FAILED, refusal)
        assert (victim / "important.doc").read_text() == "precious\n"

        inner = tmp_path / "scratch1" / "inner"
        inner.mkdir(parents=True)
        (inner / "keep").write_text("keep")
        here = subprocess.run(
            cli_command(getter_home, "get", shared["ticket"], "-o", ".", "--force"),
            cwd=inner,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert here.returncode == ExitCode.FAILED
        assert here.stderr.startswith(f"error: {inner} is an existing directory")
        assert (inner / "keep").read_text() == "keep"

        # Following the hint loses nothing.
        cli_json(getter_home, "get", shared["ticket"], "-o", str(victim / "small.bin"))
        assert (victim / "small.bin").read_bytes() == data.read_bytes()
        assert sorted(p.name for p in victim.iterdir()) == ["important.doc", "small.bin", "sub"]
        assert downloads(getter_home) == []


def test_a_get_whose_daemon_stops_says_the_download_resumes_at_its_next_start(
    short_tmp: Path, tmp_path: Path
) -> None:
    """Field test #18: it said `the daemon closed the connection before answering`."""
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "slow.bin", 16 * MIB)
    out = tmp_path / "out.bin"
    with slow_seeder(seeder_home, data) as shared, DaemonProcess(getter_home) as getter:
        getter.start()
        get = subprocess.Popen(
            cli_command(getter_home, "get", shared["ticket"], "-o", str(out)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: verified_chunks(getter_home, shared["cid"]) >= 2, "2 verified chunks")
        getter.stop()
        _, stderr = get.communicate(timeout=30)
    assert get.returncode == ExitCode.FAILED
    assert stderr.endswith(
        "error: the daemon stopped before the download finished; it resumes when the daemon "
        f"starts again (p2pshare --home {getter_home.root} daemon), and the same get then "
        "follows it\n"
    )


def test_a_get_of_unshared_content_says_it_is_no_longer_shared(
    short_tmp: Path, tmp_path: Path
) -> None:
    """Field test #18: it said `no provider sent a valid manifest`, which hints at an attack."""
    seeder_home, getter_home = init_homes(short_tmp, "s", "g")
    data = make_file(tmp_path / "gone.bin", 1000)
    with DaemonProcess(seeder_home) as seeder, DaemonProcess(getter_home) as getter:
        start_all([seeder, getter])
        shared = cli_json(seeder_home, "share", str(data))
        cli_json(seeder_home, "unshare", shared["cid"])
        result = run_cli(getter_home, "get", shared["ticket"], "-o", str(tmp_path / "x"))
    assert result.returncode == ExitCode.FAILED
    assert result.stderr == (
        f"error: the 1 provider(s) found for {shared['cid']} no longer share it; it can be "
        "fetched again once a node shares it\n"
    )
