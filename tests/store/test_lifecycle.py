"""Each catalog record of a download holds only its own states, read back as the enum."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pshare.store.catalog import Catalog, DownloadRequest, DownloadRow
from p2pshare.store.lifecycle import PROGRESS_STATES, REQUEST_STATES, DownloadState

if TYPE_CHECKING:
    from pathlib import Path


def _request(state: DownloadState) -> DownloadRequest:
    return DownloadRequest("bafk1", "/d/1", (), False, state, None, 7, 7)


def _row(state: DownloadState) -> DownloadRow:
    return DownloadRow("bafk1", "/d/1", b"manifest", b"\x00", state, 7)


def test_every_state_belongs_to_one_record_but_retrying_which_is_only_shown() -> None:
    assert not REQUEST_STATES & PROGRESS_STATES
    assert set(DownloadState) - REQUEST_STATES - PROGRESS_STATES == {DownloadState.RETRYING}


def test_catalog_keeps_each_record_to_its_own_states(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    try:
        for state in REQUEST_STATES:
            catalog.save_download_request(_request(state))
            with pytest.raises(ValueError, match="progress record"):
                catalog.save_download(_row(state))
        for state in PROGRESS_STATES:
            catalog.save_download(_row(state))
            with pytest.raises(ValueError, match="download request"):
                catalog.save_download_request(_request(state))
            with pytest.raises(ValueError, match="download request"):
                catalog.set_download_state("bafk1", state, None, 8)
        catalog.set_download_state("bafk1", DownloadState.PAUSED, None, 8)
        catalog.save_download(_row(DownloadState.COMPLETE))
        request, row = catalog.download_request("bafk1"), catalog.download("bafk1")
        assert request is not None
        assert row is not None
        assert request.state is DownloadState.PAUSED
        assert row.state is DownloadState.COMPLETE
    finally:
        catalog.close()
