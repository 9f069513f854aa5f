"""Private shares between real daemons on 127.0.0.1 (issue 17).

A share sealed to one peer travels as ciphertext: an untrusted node may fetch and
seed it without reading it, a get by that node fails before writing anything, and
the named recipient gets the plaintext through that seeder alone.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, init_home, run_cli, wait_announced
from p2pshare.proto.cid import ContentId
from p2pshare.proto.ticket import Ticket
from tests.integration.cluster import bootstrapped, cli_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
MIB = 1 << 20


@pytest.fixture
def nodes(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    """Four daemons; node0 is the bootstrap node of the others."""
    yield from bootstrapped(short_tmp, 4)


def test_recipient_gets_a_private_share_through_an_untrusted_seeder_that_cannot_read_it(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    boot, sharer, seeder, recipient = nodes
    tree = tmp_path / "plans"
    (tree / "sub").mkdir(parents=True)
    secret = os.urandom(2 * MIB + 3)
    (tree / "sub" / "secret-plan.bin").write_bytes(secret)
    (tree / "note.txt").write_text("meet at noon\n")
    to = recipient.info["peer_id"]
    shared = cli_json(sharer.home, "share", str(tree), "--to", to, "--anyone-may-seed")
    assert shared["recipients"] == sorted([to, sharer.info["peer_id"]])

    # A peer not named fails before anything is written, whether it fetched first or not.
    out = tmp_path / "stolen"
    for stranger, ref in ((boot, shared["ticket"]), (seeder, shared["cid"])):
        if stranger is seeder:
            assert cli_json(seeder.home, "seed", shared["ticket"])["seed_only"]
        refused = run_cli(stranger.home, "get", ref, "-o", str(out), timeout=120)
        assert refused.returncode == 1
        assert "is a private share not sealed to this node" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not out.exists()
        assert not list(tmp_path.glob(".stolen*"))

    # The sharer goes away: only the untrusted seeder holds the content now.
    cli_json(sharer.home, "unshare", shared["cid"])
    got = tmp_path / "got"
    report = cli_json(recipient.home, "get", shared["cid"], "-o", str(got))
    assert report["peers"] == [seeder.info["peer_id"]]
    assert report["private"]
    assert (got / "sub" / "secret-plan.bin").read_bytes() == secret
    assert (got / "note.txt").read_text() == "meet at noon\n"


def test_ls_shows_whom_a_share_is_for_and_revoke_refuses_further_requests(
    short_tmp: Path, tmp_path: Path
) -> None:
    home = Home(short_tmp / "alone")
    init_home(home)
    source = tmp_path / "note.txt"
    source.write_text("for one friend\n")
    friend = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    with DaemonProcess(home) as node:
        node.start()
        shared = cli_json(home, "share", str(source), "--to", friend)
        listing = run_cli(home, "ls")
        assert f"private, for: {', '.join(shared['recipients'])}" in listing.stdout
        assert friend in shared["recipients"]
        # The sharer reads its own private share back from its store.
        cli_json(home, "get", shared["cid"], "-o", str(tmp_path / "back.txt"))
        assert (tmp_path / "back.txt").read_text() == "for one friend\n"
        said = run_cli(home, "unshare", shared["cid"], "--revoke")
        assert said.returncode == 0, said.stderr
        assert "copies already delivered stay readable" in said.stdout
        bad = run_cli(home, "share", str(source), "--to", "bob")
        assert bad.returncode == 2
        assert "is not a peer ID" in bad.stderr


def _never_shared(shared: dict[str, str]) -> tuple[str, str]:
    """A content ID no one shares, and a ticket naming it at the sharer's addresses."""
    cid = shared["cid"]
    other = cid[:-3] + ("a" if cid[-3] != "a" else "b") + cid[-2:]
    ticket = Ticket.parse(shared["ticket"])
    return other, str(Ticket(ContentId.parse(other), ticket.peer_id, ticket.addrs))


def test_a_peer_not_named_gets_the_answer_for_content_no_one_shares(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    """No oracle: not announced, and refused as content the sharer does not hold."""
    _boot, sharer, stranger, friend = nodes
    source = tmp_path / "diary.txt"
    source.write_text("dear diary\n")
    shared = cli_json(sharer.home, "share", str(source), "--to", friend.info["peer_id"])
    assert shared["announced_to"] == 0
    assert shared["withheld"]
    other_cid, other_ticket = _never_shared(shared)
    out = tmp_path / "out"
    for verb in (("get", "-o", str(out)), ("seed",), ("find",)):
        for mine, other in ((shared["cid"], other_cid), (shared["ticket"], other_ticket)):
            if verb[0] == "find" and mine == shared["ticket"]:
                continue
            asked = run_cli(stranger.home, verb[0], mine, *verb[1:], timeout=120)
            control = run_cli(stranger.home, verb[0], other, *verb[1:], timeout=120)
            assert asked.returncode == control.returncode == 1, asked.stderr
            assert asked.stderr.replace(shared["cid"], "CID") == control.stderr.replace(
                other_cid, "CID"
            )
            assert len(asked.stderr.strip().splitlines()) == 1
            assert not out.exists()
    got = tmp_path / "got.txt"
    report = cli_json(friend.home, "get", shared["ticket"], "-o", str(got))
    assert report["private"]
    assert got.read_text() == "dear diary\n"


def _share_status(node: DaemonProcess, cid: str) -> dict[str, Any]:
    shares = cli_json(node.home, "status")["shares"]
    return next(s for s in shares if s["cid"] == cid)


def test_a_recipient_announces_its_copy_only_once_it_seeds_it(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    """A provider record of the recipient would tell anyone that the share exists and
    that this node holds it (field test: the recipient re-announced the ciphertext)."""
    _boot, sharer, recipient, _other = nodes
    source = tmp_path / "letter.txt"
    source.write_text("for your eyes\n")
    to = recipient.info["peer_id"]
    shared = cli_json(sharer.home, "share", str(source), "--to", to, "--anyone-may-seed")
    cli_json(recipient.home, "get", shared["ticket"], "-o", str(tmp_path / "got.txt"))
    # Restarted, it announces every share again: this one still not.
    recipient.stop()
    with DaemonProcess(recipient.home) as again:
        again.start()
        held = _share_status(again, shared["cid"])
        assert (held["provided_at"], held["withheld"]) == (
            None,
            "a private share received here, announced only if this node seeds it (seed CID)",
        )
        # Seeding the copy it holds fetches nothing and announces it.
        seeded = cli_json(again.home, "seed", shared["cid"])
        assert (seeded["seed_only"], seeded["peers"]) == (True, [])
        wait_announced(again.home, shared["cid"])
        assert _share_status(again, shared["cid"])["withheld"] is None
        again.stop()
