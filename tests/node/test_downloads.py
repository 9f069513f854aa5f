"""The download manager with a scripted runner: resume at start, attach, pause, retry,
listing and cancel.  No network; trio's autojump clock makes the backoff instant."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import trio

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.node.downloads import (
    ACTIVE,
    FAILED,
    PAUSED,
    PROGRESS_EVERY_S,
    ClientGoneError,
    DownloadManager,
    DownloadStoppedError,
    UnknownDownloadError,
)
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.store.catalog import MIGRATIONS, Catalog, DownloadRequest, DownloadRow
from p2pshare.store.lifecycle import DownloadState
from p2pshare.store.shares import ShareStore
from p2pshare.transfer.destination import DestinationExistsError
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.output import partial_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from p2pshare.node.downloads import Job, Watch

    Step = Callable[[DownloadRequest, Watch], Awaitable[dict[str, Any]]]

CHUNK = MIN_CHUNK_SIZE
SUMMARY = {"cid": "done"}


class Script:
    """A runner that plays one step per attempt and records when each attempt began."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.started: list[float] = []
        self.requests: list[DownloadRequest] = []

    async def __call__(self, request: DownloadRequest, watch: Watch) -> dict[str, Any]:
        self.started.append(trio.current_time())
        self.requests.append(request)
        return await self.steps.pop(0)(request, watch)


async def succeed(_request: DownloadRequest, _watch: Watch) -> dict[str, Any]:
    return SUMMARY


async def no_providers(request: DownloadRequest, _watch: Watch) -> dict[str, Any]:
    raise NoProvidersError(f"no providers found for {request.cid}")


def blocked(release: trio.Event, progress_data: dict[str, Any] | None = None) -> Step:
    async def step(_request: DownloadRequest, watch: Watch) -> dict[str, Any]:
        if progress_data is not None:
            watch(lambda: progress_data)
        await release.wait()
        return SUMMARY

    return step


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = Catalog(root / "catalog.sqlite")
        store = ShareStore(self.catalog, root / "content", NodeKey.generate(), CHUNK)
        source = root / "source.bin"
        source.write_bytes(os.urandom(4 * CHUNK + 5))
        share = store.commit(store.prepare(source))
        self.cid, self.signed = share.cid, share.signed_manifest
        # This node did not download it: only the getter's records matter here.
        self.catalog.remove_share(self.cid)

    def request(self, name: str, state: str = ACTIVE, **changes: Any) -> DownloadRequest:
        fields: dict[str, Any] = {
            "cid": self.cid,
            "destination": str(self.root / name),
            "sources": (("peerA", ("/ip4/127.0.0.1/tcp/1",)),),
            "force": False,
            "state": state,
            "error": None,
            "created_at": 1,
            "updated_at": 1,
        } | changes
        return DownloadRequest(**fields)

    def saved(
        self, name: str, state: str = ACTIVE, *, chunks: int = 0, **changes: Any
    ) -> DownloadRequest:
        """A request as an earlier daemon run left it in the catalog, ``chunks`` written."""
        request = self.request(name, state, **changes)
        self.catalog.save_download_request(request)
        if chunks:
            self.written(request, chunks)
        return request

    def written(self, request: DownloadRequest, chunks: int) -> None:
        """Record ``chunks`` verified chunks and a partial file, as the downloader does."""
        self.record(request, chunks)
        partial_path(self.root / request.destination).write_bytes(b"x" * CHUNK * chunks)

    def record(self, request: DownloadRequest, chunks: int) -> None:
        """Record ``chunks`` verified chunks, as the downloader does once its partial exists."""
        bits = Bitfield(5)
        for index in range(chunks):
            bits.set(index)
        self.catalog.save_download(
            DownloadRow(
                request.cid,
                request.destination,
                self.signed,
                bits.to_bytes(),
                DownloadState.RUNNING,
                1,
            )
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    environment.catalog.close()


async def started(manager: DownloadManager, nursery: trio.Nursery) -> DownloadManager:
    await nursery.start(manager.run)
    return manager


async def gone(_name: str, _data: dict[str, Any]) -> None:
    raise trio.BrokenResourceError


async def quiet(_name: str, _data: dict[str, Any]) -> None:
    return None


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Let other tasks run until ``condition`` holds; fail after ``limit`` (virtual) seconds."""
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.01)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as opened:
        yield opened
        opened.cancel_scope.cancel()


def job_of(manager: DownloadManager, cid: str) -> Job:
    """The job the manager runs for ``cid``, which the test expects there to be."""
    job = manager.job(cid)
    assert job is not None
    return job


def follow_in(
    nursery: trio.Nursery,
    manager: DownloadManager,
    job: Job,
    *,
    emit: Callable[[str, dict[str, Any]], Awaitable[None]] = quiet,
    catch: type[Exception] = DownloadStoppedError,
) -> list[Exception]:
    """Follow ``job`` in a task of ``nursery``; the list gets the ``catch`` error ending it."""
    caught: list[Exception] = []

    async def follower() -> None:
        try:
            await manager.follow(job, emit)
        except catch as exc:
            caught.append(exc)

    nursery.start_soon(follower)
    return caught


async def test_start_resumes_active_downloads_only_and_forgets_them_when_done(
    env: Env, nursery: trio.Nursery
) -> None:
    active = env.saved("active.bin", chunks=2)
    script = Script(succeed)
    manager = await started(DownloadManager(env.catalog, script), nursery)
    job = job_of(manager, env.cid)
    await job.finished.wait()
    assert script.requests == [active]
    assert job.result == SUMMARY
    assert env.catalog.download_request(env.cid) is None


async def test_paused_and_failed_downloads_wait_for_the_user(
    env: Env, nursery: trio.Nursery
) -> None:
    env.saved("p.bin", PAUSED)
    script = Script()
    manager = await started(DownloadManager(env.catalog, script), nursery)
    assert manager.job(env.cid) is None
    assert [d["state"] for d in manager.listing()] == ["paused"]
    assert script.requests == []


async def test_listing_shows_progress_state_and_reason(env: Env, nursery: trio.Nursery) -> None:
    error = "f.bin already exists; use --force to replace it"
    failed = env.saved("f.bin", FAILED, chunks=3, error=error)
    manager = await started(DownloadManager(env.catalog, Script()), nursery)
    [entry] = manager.listing()
    assert entry == {
        "cid": env.cid,
        "destination": failed.destination,
        "state": "failed",
        "error": "f.bin already exists; use --force to replace it",
        "retry_in_s": None,
        "size": 4 * CHUNK + 5,
        "chunks": 5,
        "verified_chunks": 3,
        "created_at": 1,
        "updated_at": 1,
    }


async def test_a_resume_without_providers_retries_with_backoff(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    env.saved("r.bin")
    script = Script(no_providers, no_providers, succeed)
    manager = await started(DownloadManager(env.catalog, script, retry_first=10), nursery)
    job = job_of(manager, env.cid)
    await until(lambda: job.retry_at is not None)
    [entry] = manager.listing()
    assert entry["state"] == "retrying"
    assert entry["retry_in_s"] == 10
    assert entry["error"] == f"no providers found for {env.cid}"
    await job.finished.wait()
    begin = script.started[0]
    assert [round(t - begin) for t in script.started] == [0, 10, 30]
    assert job.result == SUMMARY
    assert manager.listing() == []


async def test_a_provider_that_connects_ends_the_wait_and_restarts_the_backoff(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A resumed download waited its full backoff although its provider was back
    (field test #27): the provider connecting is the signal to retry."""
    env.saved("p.bin")
    script = Script(no_providers, no_providers, succeed)
    manager = await started(DownloadManager(env.catalog, script, retry_first=10), nursery)
    job = job_of(manager, env.cid)
    await until(lambda: job.retry_at is not None)
    begin = script.started[0]
    await trio.sleep(3)
    manager.peer_connected("someone-else")
    await trio.sleep(0.5)
    assert len(script.started) == 1, "a peer the request does not name changes nothing"
    manager.peer_connected("peerA")
    await until(lambda: len(script.started) == 2)
    await job.finished.wait()
    # Retried on arrival; the next wait is the first step (10 s) again, not 20 s.
    assert [round(t - begin, 1) for t in script.started] == [0, 3.5, 13.5]
    assert job.result == SUMMARY


async def test_a_resume_gives_up_after_its_window_and_says_why(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    env.saved("g.bin")
    script = Script(*[no_providers] * 20)
    manager = DownloadManager(env.catalog, script, retry_first=10, retry_max=40, give_up_after=100)
    await started(manager, nursery)
    job = job_of(manager, env.cid)
    await job.finished.wait()
    begin = script.started[0]
    assert [round(t - begin) for t in script.started] == [0, 10, 30, 70, 110]
    [entry] = manager.listing()
    assert entry["state"] == "failed"
    assert entry["error"].startswith(f"no providers found for {env.cid} (gave up after")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DestinationExistsError("out already exists; use --force to replace it"), "out already"),
        (RuntimeError("a bug"), "failed on an internal error; see daemon.log"),
    ],
)
async def test_other_failures_are_marked_failed_at_once(
    env: Env, nursery: trio.Nursery, error: Exception, reason: str
) -> None:
    async def fail(_request: DownloadRequest, _watch: Watch) -> dict[str, Any]:
        raise error

    env.saved("x.bin")
    manager = await started(DownloadManager(env.catalog, Script(fail, succeed)), nursery)
    job = job_of(manager, env.cid)
    await job.finished.wait()
    [entry] = manager.listing()
    assert entry["state"] == "failed"
    assert reason in entry["error"]
    # The manager survives and the same download can be asked for again.
    again = await manager.submit(env.request("x.bin"))
    assert await manager.follow(again, quiet) == SUMMARY


async def test_a_get_attaches_to_the_running_download(env: Env, nursery: trio.Nursery) -> None:
    release = trio.Event()
    step = blocked(release, {"done": 1, "total": 2, "peers": 1})

    async def write_when_released(request: DownloadRequest, watch: Watch) -> dict[str, Any]:
        summary = await step(request, watch)
        (env.root / "a.bin").write_bytes(b"done")
        return summary

    script = Script(write_when_released)
    manager = await started(DownloadManager(env.catalog, script), nursery)
    first = await manager.submit(env.request("a.bin"))
    second = await manager.submit(env.request("a.bin", sources=()))
    assert second is first
    with pytest.raises(UserError, match="already being downloaded by this node to"):
        await manager.submit(env.request("elsewhere.bin"))
    events: list[tuple[str, dict[str, Any]]] = []

    async def record(name: str, data: dict[str, Any]) -> None:
        events.append((name, data))
        release.set()

    assert await manager.follow(second, record) == SUMMARY
    assert events[0] == ("progress", {"done": 1, "total": 2, "peers": 1})
    assert len(script.requests) == 1
    # Asked for again after it completed: the summary, not "already exists".
    assert await manager.submit(env.request("a.bin")) is first


async def test_a_following_get_is_told_the_progress_as_it_is_when_sent(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """The download is asked at each event (every PROGRESS_EVERY_S), not made to push."""
    release = trio.Event()
    state = {"done": 0, "total": 3, "peers": 1}

    async def step(_request: DownloadRequest, watch: Watch) -> dict[str, Any]:
        watch(lambda: dict(state))
        await release.wait()
        return SUMMARY

    manager = await started(DownloadManager(env.catalog, Script(step)), nursery)
    job = await manager.submit(env.request("p.bin"))
    sent: list[float] = []
    began = trio.current_time()

    async def record(name: str, data: dict[str, Any]) -> None:
        assert name == "progress"
        sent.append(data["done"])
        state["done"] += 1
        if state["done"] == 3:
            release.set()

    with trio.fail_after(10):
        assert await manager.follow(job, record) == SUMMARY
    assert sent == [0, 1, 2]
    assert trio.current_time() - began == pytest.approx(3 * PROGRESS_EVERY_S)


@pytest.mark.parametrize("change", ["rewritten", "replaced", "removed"])
async def test_a_completed_download_the_user_changed_since_is_not_reported_saved(
    env: Env, nursery: trio.Nursery, change: str
) -> None:
    """A get run again after the user changed the file must not say it was saved."""
    out = env.root / "a.bin"

    async def write(_request: DownloadRequest, _watch: Watch) -> dict[str, Any]:
        out.write_bytes(b"the content")
        return SUMMARY

    script = Script(write, succeed)
    manager = await started(DownloadManager(env.catalog, script), nursery)
    first = await manager.submit(env.request("a.bin"))
    assert await manager.follow(first, quiet) == SUMMARY
    if change == "rewritten":
        # The same size, in place; the file clock is coarse enough for two writes in
        # a test to share an mtime, which a user's edit would not.
        out.write_bytes(b"the user's!")
        os.utime(out, ns=(0, 0))
    elif change == "replaced":
        other = env.root / "other"
        other.write_bytes(b"the content")
        other.replace(out)
    else:
        out.unlink()
    if change == "removed":
        again = await manager.submit(env.request("a.bin"))
        assert again is not first
        assert await manager.follow(again, quiet) == SUMMARY
        assert len(script.requests) == 2
    else:
        with pytest.raises(DestinationExistsError, match="already exists; use --force"):
            await manager.submit(env.request("a.bin"))


async def test_ctrl_c_of_the_last_get_pauses_and_keeps_the_progress(
    env: Env, nursery: trio.Nursery
) -> None:
    async def write_then_wait(req: DownloadRequest, watch: Watch) -> dict[str, Any]:
        env.written(req, 2)
        watch(lambda: {"done": 2, "total": 5, "peers": 1})
        await trio.sleep_forever()
        raise AssertionError

    manager = await started(DownloadManager(env.catalog, Script(write_then_wait)), nursery)
    job = await manager.submit(env.request("c.bin"))
    leave = trio.Event()

    async def interruptible(_name: str, _data: dict[str, Any]) -> None:
        if leave.is_set():
            raise trio.BrokenResourceError

    left = follow_in(nursery, manager, job, emit=interruptible, catch=ClientGoneError)
    await until(lambda: job.watchers == 1 and job.progress is not None)
    # One of two gets going away only detaches it...
    with pytest.raises(ClientGoneError):
        await manager.follow(job, gone)
    assert job.stop is None
    # ...the last one pauses the download.
    leave.set()
    await job.finished.wait()
    await until(lambda: bool(left))
    [entry] = manager.listing()
    assert (entry["state"], entry["verified_chunks"]) == ("paused", 2)
    assert partial_path(env.root / "c.bin").exists()


async def test_a_get_that_wrote_nothing_leaves_no_record(env: Env, nursery: trio.Nursery) -> None:
    manager = await started(DownloadManager(env.catalog, Script(no_providers)), nursery)
    job = await manager.submit(env.request("n.bin"))
    with pytest.raises(NoProvidersError):
        await manager.follow(job, quiet)
    assert manager.listing() == []

    manager = await started(DownloadManager(env.catalog, Script(blocked(trio.Event()))), nursery)
    job = await manager.submit(env.request("n.bin"))
    with pytest.raises(ClientGoneError):
        await manager.follow(job, gone)
    await job.finished.wait()
    assert manager.listing() == []


async def test_cancel_removes_the_partial_and_the_records(env: Env, nursery: trio.Nursery) -> None:
    paused = env.saved("file.bin", PAUSED, chunks=1)
    manager = await started(DownloadManager(env.catalog, Script()), nursery)
    result = await manager.cancel(env.cid)
    assert result == {"cid": env.cid, "destination": paused.destination, "removed_partial": True}
    assert not partial_path(env.root / "file.bin").exists()
    assert env.catalog.download(env.cid) is None
    assert manager.listing() == []
    with pytest.raises(UnknownDownloadError, match="no unfinished download"):
        await manager.cancel(env.cid)


async def test_cancel_stops_a_running_download_and_its_directory(
    env: Env, nursery: trio.Nursery
) -> None:
    release = trio.Event()
    manager = await started(DownloadManager(env.catalog, Script(blocked(release))), nursery)
    job = await manager.submit(env.request("tree"))
    partial = partial_path(env.root / "tree")
    (partial / "sub").mkdir(parents=True)
    env.record(job.request, chunks=1)
    (partial / "sub" / "f").write_bytes(b"data")
    outcome = follow_in(nursery, manager, job)
    await until(lambda: job.watchers == 1)
    await manager.cancel(env.cid)
    await until(lambda: bool(outcome))
    assert str(outcome[0]) == f"the download of {env.cid} was cancelled"
    assert not partial.exists()
    assert env.catalog.download_request(env.cid) is None


async def test_a_different_destination_needs_the_old_one_cancelled(
    env: Env, nursery: trio.Nursery
) -> None:
    env.saved("old.bin", PAUSED)
    manager = await started(DownloadManager(env.catalog, Script(succeed)), nursery)
    with pytest.raises(UserError, match="p2pshare downloads cancel"):
        await manager.submit(env.request("new.bin"))
    resumed = await manager.submit(env.request("old.bin", sources=(("peerB", ()),)))
    assert [peer for peer, _ in resumed.request.sources] == ["peerB", "peerA"]
    assert resumed.request.created_at == 1


async def test_other_content_to_the_same_destination_waits_for_the_unfinished_one(
    env: Env, nursery: trio.Nursery
) -> None:
    """Both partials would have the same name: neither download may take the other's."""
    env.saved("same.bin", PAUSED, chunks=1)
    manager = await started(DownloadManager(env.catalog, Script(succeed)), nursery)
    other = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"
    with pytest.raises(UserError, match=f"downloads cancel {env.cid}"):
        await manager.submit(env.request("same.bin", cid=other))
    assert partial_path(env.root / "same.bin").exists()


async def test_cancel_removes_a_private_downloads_ciphertext_partial_from_the_store(
    env: Env, nursery: trio.Nursery
) -> None:
    """A private share's ciphertext is written into the store, not to ``-o``: cancel
    must find and delete that partial, and the listing must show its progress; the
    store's directory made for it goes too."""
    stored = env.root / "content" / ("ab" * 32) / "tree"
    request = env.saved("plain", PAUSED)
    env.record(replace(request, destination=str(stored)), chunks=2)
    partial = partial_path(stored)
    partial.mkdir(parents=True)
    (partial / "sealed-0").write_bytes(b"c" * CHUNK * 2)
    manager = await started(
        DownloadManager(env.catalog, Script(), stored_at=lambda _cid: str(stored)), nursery
    )
    assert manager.listing()[0]["verified_chunks"] == 2
    result = await manager.cancel(env.cid)
    assert result["removed_partial"] is True
    assert not partial.exists()
    assert list((env.root / "content").iterdir()) == []
    assert env.catalog.download(env.cid) is None


async def test_a_download_into_a_directory_lists_and_cancels_the_partial_it_named(
    env: Env, nursery: trio.Nursery
) -> None:
    """-o DIR/: the request keeps DIR/, the progress record names DIR/NAME."""
    into = env.root / "into"
    into.mkdir()
    request = env.saved("into", PAUSED, destination=f"{into}/")
    assert request.destination.endswith("/")
    named = replace(request, destination=str(into / "file.bin"))
    env.written(named, 2)
    manager = await started(DownloadManager(env.catalog, Script()), nursery)
    [entry] = manager.listing()
    assert entry["verified_chunks"] == 2
    # Listed where it writes, not as the bare DIR/ it was asked for.
    assert entry["destination"] == str(into / "file.bin")
    result = await manager.cancel(env.cid)
    assert result["removed_partial"] is True
    assert result["destination"] == str(into / "file.bin")
    assert list(into.iterdir()) == []


async def test_a_private_download_into_a_directory_is_listed_as_the_directory_not_the_store(
    env: Env, nursery: trio.Nursery
) -> None:
    """Its progress record names the ciphertext in the node's store, an internal path."""
    into = env.root / "into"
    into.mkdir()
    stored = env.root / "content" / ("cd" * 32) / "tree"
    request = env.saved("into", PAUSED, destination=f"{into}/")
    env.record(replace(request, destination=str(stored)), chunks=2)
    manager = await started(
        DownloadManager(env.catalog, Script(), stored_at=lambda _cid: str(stored)), nursery
    )
    [entry] = manager.listing()
    assert entry["verified_chunks"] == 2
    assert entry["destination"] == f"{into}/"


async def test_cancel_never_deletes_a_partial_this_node_did_not_write(
    env: Env, nursery: trio.Nursery
) -> None:
    env.saved("theirs.bin", PAUSED)
    planted = partial_path(env.root / "theirs.bin")
    planted.mkdir()
    (planted / "theirs").write_bytes(b"theirs")
    manager = await started(DownloadManager(env.catalog, Script()), nursery)
    result = await manager.cancel(env.cid)
    assert result["removed_partial"] is False
    assert (planted / "theirs").read_bytes() == b"theirs"


def test_unfinished_downloads_of_a_version_2_catalog_are_resumed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO downloads VALUES ('bafk1', '/d/1', x'00', x'01', 'running', 7)")
        db.execute("INSERT INTO downloads VALUES ('bafk2', '/d/2', x'00', x'01', 'complete', 8)")
    catalog = Catalog(path)
    assert catalog.download_requests() == [
        DownloadRequest("bafk1", "/d/1", (), False, ACTIVE, None, 7, 7)
    ]
    catalog.close()


async def test_a_stopping_daemon_leaves_the_download_to_resume(
    env: Env, nursery: trio.Nursery
) -> None:
    async with trio.open_nursery() as daemon:
        manager = await started(DownloadManager(env.catalog, Script(blocked(trio.Event()))), daemon)
        job = await manager.submit(env.request("s.bin"))
        outcome = follow_in(nursery, manager, job)
        await until(lambda: job.watchers == 1)
        daemon.cancel_scope.cancel()
    await until(lambda: bool(outcome))
    assert "resumes at its next start" in str(outcome[0])
    request = env.catalog.download_request(env.cid)
    assert request is not None
    assert request.state == ACTIVE
