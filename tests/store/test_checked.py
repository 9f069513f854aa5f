"""The table of chunks hashed since their file last changed (p2pshare.store.checked)."""

from __future__ import annotations

import dataclasses

import pytest

from p2pshare.store.checked import RACY_NS, CheckedChunks, FileIdentity

CID = "bafy-test"
SETTLED = FileIdentity(device=1, inode=2, size=300, mtime_ns=10**18, ctime_ns=10**18)
LATER = SETTLED.ctime_ns + RACY_NS + 1


def test_a_recorded_chunk_is_trusted_only_under_the_same_identity() -> None:
    checked = CheckedChunks()
    checked.record(CID, 0, SETTLED, 2, 3, read_at_ns=LATER)
    assert checked.trusted(CID, 0, SETTLED, 2)
    assert not checked.trusted(CID, 0, SETTLED, 1)
    assert not checked.trusted(CID, 1, SETTLED, 2)
    assert not checked.trusted("other", 0, SETTLED, 2)


@pytest.mark.parametrize("field", ["device", "inode", "size", "mtime_ns", "ctime_ns"])
def test_any_change_of_identity_is_distrusted(field: str) -> None:
    checked = CheckedChunks()
    checked.record_file(CID, 0, SETTLED, 3, read_at_ns=LATER)
    changed = dataclasses.replace(SETTLED, **{field: getattr(SETTLED, field) + 1})
    assert not checked.trusted(CID, 0, changed, 0)


def test_a_file_changed_less_than_racy_ns_before_the_read_is_never_trusted() -> None:
    checked = CheckedChunks()
    racy = SETTLED.ctime_ns + RACY_NS
    checked.record(CID, 0, SETTLED, 0, 3, read_at_ns=racy)
    checked.record_file(CID, 1, SETTLED, 3, read_at_ns=racy)
    assert not checked.trusted(CID, 0, SETTLED, 0)
    assert not checked.trusted(CID, 1, SETTLED, 0)


def test_a_new_identity_starts_from_nothing() -> None:
    checked = CheckedChunks()
    checked.record_file(CID, 0, SETTLED, 3, read_at_ns=LATER)
    edited = dataclasses.replace(SETTLED, ctime_ns=SETTLED.ctime_ns + 5)
    checked.record(CID, 0, edited, 1, 3, read_at_ns=LATER + 5)
    assert checked.trusted(CID, 0, edited, 1)
    assert not checked.trusted(CID, 0, edited, 0)
    assert not checked.trusted(CID, 0, SETTLED, 1)


def test_forget_drops_every_entry_of_a_share() -> None:
    checked = CheckedChunks()
    checked.record_file(CID, 0, SETTLED, 3, read_at_ns=LATER)
    checked.record_file(CID, 1, SETTLED, 3, read_at_ns=LATER)
    checked.record_file("other", 0, SETTLED, 3, read_at_ns=LATER)
    checked.forget(CID)
    assert not checked.trusted(CID, 0, SETTLED, 0)
    assert not checked.trusted(CID, 1, SETTLED, 0)
    assert checked.trusted("other", 0, SETTLED, 0)
