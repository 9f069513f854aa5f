"""The sentence a failed download ends with names the real cause (field test #18).

A provider that simply does not have the content (it unshared it, its file changed
on disk) is told apart from one that lied: only a forged manifest or a bad chunk is
reported as such.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.source import LocalContent
from tests.transfer.test_download import (
    Fixture,
    LyingSource,
    failure_of,
    inline_threads,  # noqa: F401 - a fixture, used through pytestmark
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import trio.testing

    from p2pshare.proto.cid import ContentId


pytestmark = pytest.mark.usefixtures("inline_threads")


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.close()


class ForgingSource(LocalContent):
    """Sends a manifest with one byte flipped."""

    def signed_manifest(self, cid: ContentId) -> bytes:
        data = super().signed_manifest(cid)
        return data[:-1] + bytes([data[-1] ^ 1])


async def test_a_seeder_whose_file_changed_on_disk_is_named_as_the_cause(
    fx: Fixture, autojump_clock: trio.testing.MockClock
) -> None:
    (fx.root / "file.bin").write_bytes(bytes(len(fx.data)))
    error = await failure_of(fx, {"seeder": LocalContent(fx.seed)}, fx.root / "out.bin")
    assert isinstance(error, NoProvidersError)
    assert str(error) == (
        f"download of {fx.cid} stopped with 41 chunks missing: the only provider, seeder, "
        "no longer serves it (its shared copy changed on disk since it was shared); run the "
        "same get again to resume"
    )


async def test_content_its_providers_unshared_is_not_called_an_attack(
    fx: Fixture, autojump_clock: trio.testing.MockClock
) -> None:
    fx.seed.remove(str(fx.cid))
    sources = {"a": LocalContent(fx.seed), "b": LocalContent(fx.seed)}
    error = await failure_of(fx, sources, fx.root / "out.bin")
    assert isinstance(error, NoProvidersError)
    assert str(error) == (
        f"the 2 provider(s) found for {fx.cid} no longer share it; it can be fetched again "
        "once a node shares it"
    )


async def test_a_forged_manifest_is_still_reported_as_forged(
    fx: Fixture, autojump_clock: trio.testing.MockClock
) -> None:
    error = await failure_of(fx, {"forger": ForgingSource(fx.seed)}, fx.root / "out.bin")
    assert str(error) == (
        f"no provider sent a valid manifest for {fx.cid}: the only provider, forger, sent a "
        "forged manifest or hash page and was banned"
    )


async def test_a_provider_sending_bad_chunks_is_named_as_banned(
    fx: Fixture, autojump_clock: trio.testing.MockClock
) -> None:
    error = await failure_of(
        fx, {"liar": LyingSource(fx.seed, bad=set(range(41)))}, fx.root / "out.bin"
    )
    assert "the only provider, liar, sent chunks that failed verification and was banned" in str(
        error
    )
