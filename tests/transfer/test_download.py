"""The downloader against in-process uploaders over trio memory streams.

Honest providers serve a real share from a ShareStore; a lying one flips bytes in
some chunks; a stalling one stops after a few chunks. No sockets, no libp2p.

Tests of timing (re-dials, lookups, refreshes) run on trio's MockClock with autojump
and the worker-thread calls inline (``inline_threads``), so the clock cannot jump
while a thread is busy; providers that must be slow are paced by an UploadLimiter,
which runs on that clock.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, TypeVar

import pytest
import trio
import trio.testing

from p2pshare.errors import UserError, leaf_errors
from p2pshare.identity import NodeKey
from p2pshare.metrics import METRICS
from p2pshare.net.streams import StreamBrokenError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.chunks import MIN_CHUNK_SIZE
from p2pshare.proto.cid import ContentId
from p2pshare.proto.transfer import Cancel, Message, Role, TransferDecoder
from p2pshare.store.catalog import Catalog, DownloadRow
from p2pshare.store.shares import ShareStore
from p2pshare.transfer import downloader, setup
from p2pshare.transfer.blocking import RunBlocking, run_in_thread
from p2pshare.transfer.destination import DestinationExistsError
from p2pshare.transfer.downloader import (
    CONNECT_TIMEOUT,
    LOOKUP_INTERVAL,
    REATTACH_DELAYS,
    Download,
    Source,
)
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.output import PartialOutput, partial_path
from p2pshare.transfer.source import LocalContent
from p2pshare.transfer.swarm import MAX_PROVIDERS
from p2pshare.transfer.uploader import UploadLimiter, serve_transfer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from p2pshare.net.streams import ByteStream
    from p2pshare.proto.chunks import BytesLike

    Behaviour = Callable[[ByteStream], Awaitable[None]]

T = TypeVar("T")

CHUNK = MIN_CHUNK_SIZE


class LyingSource(LocalContent):
    """Serves the share but flips one byte of every chunk in ``bad``."""

    def __init__(self, shares: ShareStore, bad: set[int]) -> None:
        super().__init__(shares)
        self.bad = bad
        self.served: list[int] = []

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        length = super().read_chunk_into(cid, global_index, out, wait=wait)
        self.served.append(global_index)
        if global_index in self.bad:
            out[0] ^= 1
        return length


class StallingSource(LocalContent):
    """Serves ``limit`` chunks, then never answers again."""

    def __init__(self, shares: ShareStore, limit: int, stalled: trio.Event) -> None:
        super().__init__(shares)
        self.limit = limit
        self.served = 0
        self.stalled = stalled

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        if self.served >= self.limit:
            self.stalled.set()
            raise RuntimeError("unreachable: the test cancels before this")
        length = super().read_chunk_into(cid, global_index, out, wait=wait)
        self.served += 1
        return length


class Fixture:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed_catalog = Catalog(root / "seed.sqlite")
        self.seed = ShareStore(self.seed_catalog, root / "content", NodeKey.generate(), CHUNK)
        self.data = os.urandom(40 * CHUNK + 77)
        (root / "file.bin").write_bytes(self.data)
        self.cid = ContentId.parse(self.seed.commit(self.seed.prepare(root / "file.bin")).cid)
        self.catalog = Catalog(root / "getter.sqlite")
        self.local = LocalContent(ShareStore(self.catalog, root / "c2", NodeKey.generate(), CHUNK))
        # A third node: it holds nothing of the share unless it downloads it too.
        self.third_catalog = Catalog(root / "third.sqlite")
        self.third = LocalContent(
            ShareStore(self.third_catalog, root / "c3", NodeKey.generate(), CHUNK)
        )
        self.run_blocking: RunBlocking = run_in_thread

    def close(self) -> None:
        self.seed_catalog.close()
        self.catalog.close()
        self.third_catalog.close()


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.close()


async def inline(fn: Callable[[], object]) -> object:
    return fn()


async def _serve(
    stream: ByteStream, source: LocalContent, limiter: UploadLimiter | None = None
) -> None:
    try:
        await serve_transfer(stream, source, limiter=limiter, run_blocking=inline)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a provider failing is part of these tests
        await stream.aclose()


async def no_more_sources(_want: int, _ask: list[str]) -> list[Source]:
    return []


def download(
    fx: Fixture, nursery: trio.Nursery, sources: dict[str, LocalContent], dest: Path
) -> Download:
    """Providers by name, each serving its source honestly; all of them hinted."""
    net = Net(nursery, {name: honest(source) for name, source in sources.items()})
    return swarm_download(fx, net, dest, list(sources))


async def run_inline(fn: Callable[[], T]) -> T:
    await trio.lowlevel.checkpoint()
    return fn()


@pytest.fixture
def inline_threads(fx: Fixture) -> None:
    """The downloader's blocking work (chunk hashing, writes, fsync) on the event loop."""
    fx.run_blocking = run_inline


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_single_source_byte_for_byte(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"honest": LocalContent(fx.seed)}, dest).run()
        nursery.cancel_scope.cancel()
    assert sha(dest.read_bytes()) == sha(fx.data)
    assert report.requested_bytes == len(fx.data)
    assert not partial_path(dest).exists()


async def test_multi_source_uses_every_provider(fx: Fixture) -> None:
    sources = {f"p{i}": LyingSource(fx.seed, set()) for i in range(3)}
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, dict(sources), dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert sorted(report.peers) == ["p0", "p1", "p2"]
    assert all(source.served for source in sources.values())


async def test_a_lying_peer_is_banned_and_honest_peers_finish(fx: Fixture) -> None:
    liar = LyingSource(fx.seed, bad=set(range(41)))
    honest = LyingSource(fx.seed, set())
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"liar": liar, "honest": honest}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.banned == ["liar"]
    assert liar.served, "the liar was asked and caught"


async def failure_of(fx: Fixture, sources: dict[str, LocalContent], dest: Path) -> BaseException:
    """The single error a download ends with, looked up through trio's exception groups."""
    try:
        async with trio.open_nursery() as nursery:
            await download(fx, nursery, sources, dest).run()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        (leaf,) = leaf_errors(exc)
        return leaf
    raise AssertionError("the download did not fail")


async def test_only_liars_means_no_file_and_a_clear_error(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    dest = fx.root / "out.bin"
    started = trio.current_time()
    error = await failure_of(fx, {"liar": LyingSource(fx.seed, bad={0})}, dest)
    assert isinstance(error, NoProvidersError)
    assert "run the same get again to resume" in str(error)
    assert not dest.exists()
    # No provider left, and the lookups find none: it ends, after CONNECT_TIMEOUT.
    assert CONNECT_TIMEOUT <= trio.current_time() - started <= CONNECT_TIMEOUT + 2


async def test_resume_fetches_no_verified_chunk_twice(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    stalled = trio.Event()
    staller = StallingSource(fx.seed, limit=10, stalled=stalled)
    async with trio.open_nursery() as nursery:
        first = download(fx, nursery, {"staller": staller}, dest)

        async def stop_when_stalled() -> None:
            await stalled.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_stalled)
        await first.run()
    row = fx.catalog.download(str(fx.cid))
    assert row is not None
    verified = Bitfield.from_bytes(row.verified, 41)
    assert 1 <= verified.count() <= 10
    missing = list(verified.iter_missing())
    honest = LyingSource(fx.seed, set())
    async with trio.open_nursery() as nursery:
        report = await download(fx, nursery, {"honest": honest}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.resumed_chunks == verified.count()
    assert sorted(honest.served) == missing, "no verified chunk is fetched twice"
    assert report.requested_bytes == sum(
        fx.seed.signed_manifest(str(fx.cid)).manifest.locate_chunk(i).length for i in missing
    )


async def test_an_existing_destination_is_refused(fx: Fixture) -> None:
    dest = fx.root / "out.bin"
    dest.write_bytes(b"keep me")
    error = await failure_of(fx, {"honest": LocalContent(fx.seed)}, dest)
    assert isinstance(error, DestinationExistsError)
    assert dest.read_bytes() == b"keep me"


async def test_progress_names_only_chunks_synced_to_disk(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: set[int] = set()
    synced: set[int] = set()
    recorded: list[set[int]] = []
    write_chunk, sync, save = PartialOutput.write_chunk, PartialOutput.sync, Catalog.save_download

    def spy_write(self: PartialOutput, index: int, data: BytesLike) -> None:
        write_chunk(self, index, data)
        written.add(index)

    def spy_sync(self: PartialOutput) -> None:
        before = set(written)
        sync(self)
        synced.update(before)

    def spy_save(self: Catalog, row: DownloadRow) -> None:
        bits = Bitfield.from_bytes(row.verified, 41)
        recorded.append(set(bits.iter_set()))
        assert recorded[-1] <= synced, "a chunk was recorded before it was synced"
        save(self, row)

    monkeypatch.setattr(PartialOutput, "write_chunk", spy_write)
    monkeypatch.setattr(PartialOutput, "sync", spy_sync)
    monkeypatch.setattr(Catalog, "save_download", spy_save)
    monkeypatch.setattr(downloader, "PERSIST_EVERY_CHUNKS", 2)
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        await download(fx, nursery, {"honest": LocalContent(fx.seed)}, dest).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert recorded[-1] == set(range(41))
    assert len(recorded) > 3


# --- providers that come and go during a download ---------------------------------------


class Net:
    """Providers by name as a downloader's ``open_stream`` reaches them; every dial is
    recorded, and a name in ``down`` cannot be reached."""

    def __init__(self, nursery: trio.Nursery, providers: dict[str, Behaviour]) -> None:
        self.nursery = nursery
        self.providers = providers
        self.down: set[str] = set()
        self.dials: list[tuple[str, float]] = []

    def dials_of(self, peer: str) -> list[float]:
        return [at for name, at in self.dials if name == peer]

    async def open_stream(self, source: Source) -> ByteStream:
        self.dials.append((source.peer_id, trio.current_time()))
        if source.peer_id in self.down:
            raise UserError(f"{source.peer_id} cannot be reached")
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.providers[source.peer_id], server)
        return client


def honest(source: LocalContent, rate: float | None = None) -> Behaviour:
    """Serves ``source`` on every stream, at ``rate`` bytes per (virtual) second if given."""

    async def behave(stream: ByteStream) -> None:
        await _serve(stream, source, None if rate is None else UploadLimiter(rate))

    return behave


class Counting(LocalContent):
    """Serves the share; ``reached`` is set as chunk number ``limit`` is read."""

    def __init__(self, shares: ShareStore, limit: int) -> None:
        super().__init__(shares)
        self.limit = limit
        self.read = 0
        self.reached = trio.Event()

    def read_chunk_into(
        self, cid: ContentId, global_index: int, out: bytearray, *, wait: bool = True
    ) -> int:
        length = super().read_chunk_into(cid, global_index, out, wait=wait)
        self.read += 1
        if self.read >= self.limit:
            self.reached.set()
        return length


def first_stream_fails(fx: Fixture, after: int, *, stall: bool = False) -> Behaviour:
    """The seed, whose first stream breaks (or, with ``stall``, goes silent for good)
    once ``after`` chunks were read for it; later streams are served normally."""
    streams = 0

    async def behave(stream: ByteStream) -> None:
        nonlocal streams
        streams += 1
        if streams > 1:
            await _serve(stream, LocalContent(fx.seed))
            return
        source = Counting(fx.seed, after)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, stream, source)
            await source.reached.wait()
            nursery.cancel_scope.cancel()
        if stall:
            await trio.sleep_forever()
        await stream.aclose()

    return behave


def finder(*peers: str) -> Callable[[int, list[str]], Awaitable[list[Source]]]:
    async def find(_want: int, _ask: list[str]) -> list[Source]:
        return [Source(peer) for peer in peers]

    return find


def swarm_download(
    fx: Fixture,
    net: Net,
    dest: Path,
    hints: list[str],
    find: Callable[[int, list[str]], Awaitable[list[Source]]] = no_more_sources,
    announce: Callable[[], None] | None = None,
) -> Download:
    return Download(
        cid=fx.cid,
        dest=dest,
        force=False,
        catalog=fx.catalog,
        local=fx.local,
        open_stream=net.open_stream,
        find_sources=find,
        hints=[Source(name) for name in hints],
        announce=announce,
        run_blocking=fx.run_blocking,
    )


async def test_a_provider_whose_stream_breaks_is_dialed_again_and_finishes(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"seed": first_stream_fails(fx, after=10)})
        report = await swarm_download(fx, net, dest, ["seed"]).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    first, again = net.dials_of("seed")
    assert again - first >= REATTACH_DELAYS[0]
    assert report.peers == ["seed"]
    assert report.chunks_from == {"seed": 41}
    assert report.banned == []


async def test_a_stalled_provider_is_dialed_again_while_another_takes_its_chunks(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """The stalled stream is dropped after REQUEST_TIMEOUT (its chunks go to the other
    provider) and, dialed again, serves again."""
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(
            nursery,
            {
                "flaky": first_stream_fails(fx, after=3, stall=True),
                # Half a chunk a second: still running when flaky is back.
                "slow": honest(LocalContent(fx.seed), rate=CHUNK / 2),
            },
        )
        report = await swarm_download(fx, net, dest, ["flaky", "slow"]).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert len(net.dials_of("flaky")) == 2
    assert report.chunks_from["flaky"] > 3, "it served again once dialed again"
    assert report.chunks_from["slow"] > 0
    assert sorted(report.peers) == ["flaky", "slow"]


async def test_a_provider_that_stays_away_is_dialed_a_bounded_number_of_times(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    dest = fx.root / "out.bin"
    started = trio.current_time()
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            net = Net(nursery, {})
            breaks = first_stream_fails(fx, after=10)

            async def then_gone(stream: ByteStream) -> None:
                net.down.add("seed")
                await breaks(stream)

            net.providers["seed"] = then_gone
            await swarm_download(fx, net, dest, ["seed"]).run()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        (error,) = leaf_errors(exc)
    assert isinstance(error, NoProvidersError), error
    assert "chunks missing" in str(error)
    # One stream, then three re-dials of two tries each.
    assert len(net.dials_of("seed")) == 1 + 2 * len(REATTACH_DELAYS)
    elapsed = trio.current_time() - started
    assert sum(REATTACH_DELAYS) + CONNECT_TIMEOUT <= elapsed <= sum(REATTACH_DELAYS) + 20
    assert not dest.exists()


@pytest.mark.parametrize("bad", ["liar", "stranger"])
async def test_a_banned_or_refusing_provider_is_never_dialed_again(
    fx: Fixture, bad: str, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """Even though every lookup names it again."""
    source = LyingSource(fx.seed, bad=set(range(41))) if bad == "liar" else fx.third
    lookups = 0

    async def find(_want: int, _ask: list[str]) -> list[Source]:
        nonlocal lookups
        lookups += 1
        return [Source(bad), Source("slow")]

    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {bad: honest(source), "slow": honest(LocalContent(fx.seed), CHUNK)})
        report = await swarm_download(fx, net, dest, [], find).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert lookups >= 3, "the download outlived two periodic lookups"
    assert len(net.dials_of(bad)) == 1
    assert report.banned == (["liar"] if bad == "liar" else [])
    assert bad not in report.chunks_from


class ResetAtOnce:
    """A stream the peer resets before anything is sent on it."""

    async def send_all(self, data: BytesLike) -> None:
        await trio.lowlevel.checkpoint()
        raise StreamBrokenError("stream to seed broke: StreamReset()")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_stream_reset_before_hello_is_an_unreachable_provider_not_a_crash(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"seed": honest(LocalContent(fx.seed))})
        dials = 0

        async def open_stream(source: Source) -> ByteStream:
            nonlocal dials
            dials += 1
            if dials == 1:
                return ResetAtOnce()
            return await net.open_stream(source)

        download = swarm_download(fx, net, dest, ["seed"], finder("seed"))
        download._open_stream = open_stream
        report = await download.run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert dials == 2
    assert report.chunks_from == {"seed": 41}


async def test_a_ticket_get_does_not_wait_for_a_slow_lookup(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    started = trio.current_time()
    lookups: list[float] = []

    async def slow_find(_want: int, _ask: list[str]) -> list[Source]:
        lookups.append(trio.current_time() - started)
        await trio.sleep(10)
        return []

    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"seed": honest(LocalContent(fx.seed))})
        report = await swarm_download(fx, net, dest, ["seed"], slow_find).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert trio.current_time() - started < 1
    assert lookups == [0], "the lookup still ran, in the background"
    assert report.chunks_from == {"seed": 41}


async def test_a_hinted_provider_without_the_content_leads_to_a_lookup(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"gone": honest(fx.third), "other": honest(LocalContent(fx.seed))})
        report = await swarm_download(fx, net, dest, ["gone"], finder("gone", "other")).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert len(net.dials_of("gone")) == 1
    assert report.chunks_from == {"other": 41}


async def test_the_periodic_lookup_attaches_a_provider_found_mid_download(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    started = trio.current_time()

    async def find(_want: int, _ask: list[str]) -> list[Source]:
        return [Source("late")] if trio.current_time() - started >= 5 else []

    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(
            nursery,
            {"slow": honest(LocalContent(fx.seed), CHUNK), "late": honest(LocalContent(fx.seed))},
        )
        report = await swarm_download(fx, net, dest, ["slow"], find).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    [dialed] = net.dials_of("late")
    assert LOOKUP_INTERVAL <= dialed - started <= LOOKUP_INTERVAL + 1
    assert report.chunks_from["late"] > 0
    assert trio.current_time() - started < 41, "faster than the slow provider alone"


async def test_the_first_lookup_stops_at_a_provider_and_the_later_ones_ask_for_more(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """A lookup that stops at the first answer naming a provider found the seeder alone,
    lookup after lookup, in a crowd where the other downloaders were providers too; and
    one that asked only the DHT's peers asked nobody once the downloader's connection
    to the seeder had closed. The later lookups ask the linked providers too."""
    wants: list[int] = []
    asked: list[list[str]] = []

    async def find(want: int, ask: list[str]) -> list[Source]:
        wants.append(want)
        asked.append(ask)
        return [Source("slow")]

    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"slow": honest(LocalContent(fx.seed), CHUNK)})
        await swarm_download(fx, net, dest, [], find).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert len(wants) >= 3, "the download outlived two periodic lookups"
    assert wants[0] == 1, "the first provider found starts the download"
    assert set(wants[1:]) == {MAX_PROVIDERS}
    assert asked[0] == [], "nobody linked yet"
    assert all(ask == ["slow"] for ask in asked[1:])


async def test_when_no_link_is_left_the_lookup_runs_at_once(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    started = trio.current_time()
    lookups = 0

    async def find(_want: int, _ask: list[str]) -> list[Source]:
        nonlocal lookups
        lookups += 1
        return [] if lookups == 1 else [Source("rescuer")]

    dest = fx.root / "out.bin"
    liar = LyingSource(fx.seed, bad=set(range(41)))
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"liar": honest(liar), "rescuer": honest(LocalContent(fx.seed))})
        report = await swarm_download(fx, net, dest, ["liar"], find).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.banned == ["liar"]
    [dialed] = net.dials_of("rescuer")
    assert dialed - started < 1, "not at the next periodic lookup"


@pytest.mark.parametrize(("rate", "slow"), [(None, False), (CHUNK, True)])
async def test_only_a_slow_download_is_announced_while_partial(
    fx: Fixture,
    autojump_clock: trio.testing.MockClock,
    inline_threads: None,
    rate: int | None,
    slow: bool,
) -> None:
    """At once, nobody would find it before it completes; at a chunk a second (41 s),
    other downloaders' lookups would (swarm.slow)."""
    announced: list[int] = []
    async with trio.open_nursery() as nursery:
        net = Net(nursery, {"seed": honest(LocalContent(fx.seed), rate)})
        fetch = swarm_download(
            fx,
            net,
            fx.root / "out.bin",
            ["seed"],
            announce=lambda: announced.append(fetch.durable.count() if fetch.durable else 0),
        )
        report = await fetch.run()
        nursery.cancel_scope.cancel()
    assert (fx.root / "out.bin").read_bytes() == fx.data
    assert report.chunks_from == {"seed": 41}
    if slow:
        assert len(announced) == 1
        assert 0 < announced[0] < 41, "while partial, holding chunks"
    else:
        assert announced == []


async def test_a_partial_download_serves_its_verified_chunks_to_a_third_peer(
    fx: Fixture,
    autojump_clock: trio.testing.MockClock,
    inline_threads: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B's only stream stalls after 12 chunks, so B stays partial.  C's other provider
    lacks exactly those chunks, so C can only finish by getting them from B."""
    monkeypatch.setattr(downloader, "PERSIST_EVERY_CHUNKS", 2)
    announced: list[int] = []
    b_announced, b_finished = trio.Event(), trio.Event()

    def announce() -> None:
        announced.append(b.durable.count() if b.durable else 0)
        b_announced.set()

    third = fx.third_catalog
    async with trio.open_nursery() as nursery:
        b_net = Net(nursery, {"A": first_stream_fails(fx, after=12, stall=True)})
        b = swarm_download(
            fx,
            b_net,
            fx.root / "b.bin",
            ["A"],
            announce=announce,
        )

        async def run_b() -> None:
            with trio.move_on_after(downloader.REQUEST_TIMEOUT - 1):
                await b.run()
            b_finished.set()

        nursery.start_soon(run_b)
        with trio.fail_after(30):
            await b_announced.wait()
        assert b.durable is not None
        held = set(b.durable.iter_set())
        lacking = LocalContent(fx.seed)
        lacking.register(fx.cid, SeedLacking(fx, held))
        c_net = Net(nursery, {"A": honest(lacking, CHUNK), "B": honest(fx.local)})
        c = Download(
            cid=fx.cid,
            dest=fx.root / "c.bin",
            force=False,
            catalog=third,
            local=fx.third,
            open_stream=c_net.open_stream,
            find_sources=finder("B"),
            hints=[Source("A")],
            run_blocking=fx.run_blocking,
        )
        report = await c.run()
        assert not b_finished.is_set(), "B was still downloading, and partial"
        nursery.cancel_scope.cancel()
    assert (fx.root / "c.bin").read_bytes() == fx.data
    assert len(announced) == 1
    assert announced[0] > 0, "announced only once it held verified chunks"
    assert 0 < len(held) < 41
    assert "B" in report.peers
    assert report.chunks_from["B"] >= len(held)


class GrowingPartial:
    """A download in progress as the uploader sees it, holding the first ``held`` chunks."""

    def __init__(self, fx: Fixture, held: int) -> None:
        self.shares = fx.seed
        self.cid = str(fx.cid)
        self.held = held

    @property
    def signed_manifest(self) -> bytes:
        return self.shares.signed_manifest(self.cid).data

    def page(self, page_index: int) -> bytes | None:
        return None

    def has_chunk(self, global_index: int) -> bool:
        return global_index < self.held

    def have(self, first_chunk: int, count: int) -> Bitfield:
        have = Bitfield(count)
        for offset in range(min(count, max(0, self.held - first_chunk))):
            have.set(offset)
        return have

    def read_chunk_into(self, global_index: int, out: bytearray, *, wait: bool = True) -> int:
        return self.shares.read_chunk_into(self.cid, global_index, out, wait=wait)


class SeedLacking(GrowingPartial):
    """The whole share as a partial that holds every chunk but those in ``missing``."""

    def __init__(self, fx: Fixture, missing: set[int]) -> None:
        super().__init__(fx, held=0)
        self.missing = missing

    def has_chunk(self, global_index: int) -> bool:
        return global_index not in self.missing

    def have(self, first_chunk: int, count: int) -> Bitfield:
        have = Bitfield(count)
        for offset in range(count):
            if first_chunk + offset not in self.missing:
                have.set(offset)
        return have


async def test_a_partial_providers_new_chunks_are_asked_for(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """Its chunk list is asked again once we have nothing to ask it for."""
    partial = GrowingPartial(fx, held=10)
    fx.third.register(fx.cid, partial)
    dest = fx.root / "out.bin"
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        net = Net(
            nursery, {"partial": honest(fx.third), "slow": honest(LocalContent(fx.seed), CHUNK)}
        )

        async def grow() -> None:
            await trio.sleep(1)
            partial.held = 41

        nursery.start_soon(grow)
        report = await swarm_download(fx, net, dest, ["partial", "slow"]).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert report.chunks_from["partial"] > 10
    assert trio.current_time() - started < 15, "not at the slow provider's pace"


async def test_a_partial_provider_with_nothing_more_to_give_does_not_keep_it_waiting(
    fx: Fixture, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """Linked, but holding nothing we lack (nor does a stale seeder): the download ends
    as with no provider at all, rather than waiting on it for ever."""
    fx.third.register(fx.cid, GrowingPartial(fx, held=10))
    dest = fx.root / "out.bin"
    started = trio.current_time()
    error: BaseException | None = None
    try:
        with trio.fail_after(10 * CONNECT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                net = Net(nursery, {"partial": honest(fx.third)})
                download = swarm_download(fx, net, dest, ["partial"])
                await download.run()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        (error,) = leaf_errors(exc)
    assert isinstance(error, NoProvidersError), error
    assert "31 chunks missing" in str(error)
    assert download.report.chunks_from == {"partial": 10}
    assert CONNECT_TIMEOUT <= trio.current_time() - started <= CONNECT_TIMEOUT + 2


async def test_small_chunks_are_asked_for_at_most_64_at_a_time(fx: Fixture) -> None:
    """4 MiB of 16 KiB chunks would be 256: more than one REQUEST may carry."""
    data = os.urandom(100 * CHUNK)
    (fx.root / "many.bin").write_bytes(data)
    cid = ContentId.parse(fx.seed.commit(fx.seed.prepare(fx.root / "many.bin")).cid)
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        report = await Download(
            cid=cid,
            dest=dest,
            force=False,
            catalog=fx.catalog,
            local=fx.local,
            open_stream=Net(nursery, {"seed": honest(LocalContent(fx.seed))}).open_stream,
            find_sources=no_more_sources,
            hints=[Source("seed")],
            run_blocking=fx.run_blocking,
        ).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == data
    assert report.chunks_from == {"seed": 100}


async def test_every_chunk_check_and_byte_moved_is_counted_in_the_node_metrics(
    fx: Fixture,
) -> None:
    before = METRICS.snapshot()
    liar = LyingSource(fx.seed, bad=set(range(41)))
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        await download(fx, nursery, {"liar": liar, "honest": LocalContent(fx.seed)}, dest).run()
        nursery.cancel_scope.cancel()
    after = METRICS.snapshot()
    chunks = -(-len(fx.data) // CHUNK)
    assert after["chunks_verified"] - before["chunks_verified"] >= chunks
    assert after["chunks_rejected"] - before["chunks_rejected"] >= 1
    assert after["bytes_received"] - before["bytes_received"] >= len(fx.data)
    # This process also ran the uploaders, so it counted the same bytes going out.
    assert after["bytes_sent"] - before["bytes_sent"] >= len(fx.data)


class ClientMessages:
    """A provider's stream that also decodes what the downloader sends on it."""

    def __init__(self, stream: ByteStream, seen: list[Message]) -> None:
        self._stream = stream
        self._decoder = TransferDecoder(Role.SERVER, max_chunk_size=CHUNK)
        self._seen = seen

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self._decoder.feed(data)
        while (message := self._decoder.next_message()) is not None:
            self._seen.append(message)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def test_an_endgame_duplicate_that_lost_is_cancelled_at_its_provider(
    fx: Fixture,
    autojump_clock: trio.testing.MockClock,
    inline_threads: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow provider's requests are duplicated at the fast one once every chunk is in
    flight; those whose chunks all came from the fast one are cancelled, rather than
    sent in full for nothing, and the slow provider is not dropped for it.  The last
    chunk is held only by a slower provider still, so the download goes on meanwhile."""
    monkeypatch.setattr(setup, "REQUEST_BYTES", 2 * CHUNK)
    last = 40

    def lacking_last() -> LocalContent:
        content = LocalContent(fx.seed)
        content.register(fx.cid, SeedLacking(fx, {last}))
        return content

    to_slow: list[Message] = []
    slow = honest(lacking_last(), CHUNK / 20)

    async def recorded_slow(stream: ByteStream) -> None:
        await slow(ClientMessages(stream, to_slow))

    fast = honest(lacking_last())

    async def fast_once_the_others_have_requests(stream: ByteStream) -> None:
        await trio.sleep(5)
        await fast(stream)

    providers = {
        "slow": recorded_slow,
        "fast": fast_once_the_others_have_requests,
        "slowest": honest(LocalContent(fx.seed), CHUNK / 200),
    }
    dest = fx.root / "out.bin"
    async with trio.open_nursery() as nursery:
        net = Net(nursery, providers)
        report = await swarm_download(fx, net, dest, list(providers)).run()
        nursery.cancel_scope.cancel()
    assert dest.read_bytes() == fx.data
    assert any(isinstance(message, Cancel) for message in to_slow)
    assert net.dials_of("slow") == [0.0], "never dropped and dialed again"
    assert report.chunks_from["slowest"] == 1
