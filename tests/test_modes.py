"""The umask a command sends, how the daemon checks it, and where it is kept (field test #14)."""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

import pytest

from p2pshare.control.server import InvalidParamsError, umask_param
from p2pshare.modes import dir_mode, file_mode, read_umask
from p2pshare.store.catalog import MIGRATIONS, Catalog, DownloadRequest
from p2pshare.store.lifecycle import DownloadState

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_027")
def test_read_umask_reads_without_changing_it() -> None:
    assert read_umask() == 0o027
    assert read_umask() == 0o027


@pytest.mark.usefixtures("umask_027")
def test_read_umask_without_proc_restores_the_umask(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("p2pshare.modes._STATUS", tmp_path / "missing")
    assert read_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_modes_follow_the_umask_and_never_carry_special_bits() -> None:
    assert (file_mode(0o022), file_mode(0o022, executable=True), dir_mode(0o022)) == (
        0o644,
        0o755,
        0o755,
    )
    assert (file_mode(0), file_mode(0, executable=True), dir_mode(0)) == (0o666, 0o777, 0o777)


def test_umask_param_defaults_to_the_daemons_and_takes_the_clients() -> None:
    assert umask_param({}, 0o077) == 0o077
    assert umask_param({"umask": None}, 0o077) == 0o077
    assert umask_param({"umask": 0}, 0o077) == 0
    assert umask_param({"umask": 0o777}, 0o077) == 0o777


@pytest.mark.parametrize("value", [-1, 0o1000, "022", True, 18.0, [0]])
def test_umask_param_out_of_range_or_not_an_integer_is_refused(value: object) -> None:
    with pytest.raises(InvalidParamsError, match="parameter 'umask' must be an integer"):
        umask_param({"umask": value}, 0o022)


def _request(umask: int | None) -> DownloadRequest:
    return DownloadRequest("bafk1", "/d/1", (), False, DownloadState.ACTIVE, None, 7, 7, umask)


def test_the_umask_of_a_get_is_kept_for_its_resume(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.save_download_request(_request(0o002))
    catalog.close()
    catalog = Catalog(tmp_path / "catalog.sqlite")
    assert catalog.download_requests() == [_request(0o002)]
    catalog.close()


def test_requests_kept_before_the_umask_column_resume_with_the_daemons(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:3]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 3")
        db.execute(
            "INSERT INTO download_requests VALUES ('bafk1', '/d/1', '[]', 0, 'active', NULL, 7, 7)"
        )
    catalog = Catalog(path)
    assert catalog.download_requests() == [_request(None)]
    catalog.close()
