"""The sentence `find` prints when it found no provider (field test #20)."""

from __future__ import annotations

import importlib

from p2pshare.errors import JOIN_FIRST

# Installed as p2pshare_cli (pyproject: package-dir), which mypy, reading cli/, cannot
# resolve by that name.
no_providers_sentence = importlib.import_module("p2pshare_cli.main").no_providers_sentence

CID = "bafkr4ibiftelhdeaewu7u63wovueotoclzdpker5e7cf4xe2ldkamuu6xa"


def test_a_finished_lookup_is_not_reported_as_a_timeout() -> None:
    sentence = no_providers_sentence(CID, {"queried": 4, "timed_out": False}, 10)
    assert sentence == (
        f"no providers found for {CID}: the lookup asked 4 peers and none knows a provider; "
        "check the content ID for a typo (content IDs carry no checksum; tickets do)"
    )
    assert "within" not in sentence


def test_a_timed_out_lookup_says_so_with_the_timeout() -> None:
    sentence = no_providers_sentence(CID, {"queried": 1, "timed_out": True}, 2.5)
    assert sentence == f"no providers found for {CID} within 2.5 s (1 peer asked by then)"


def test_a_node_without_peers_is_told_to_join_first() -> None:
    sentence = no_providers_sentence(CID, {"queried": 0, "timed_out": False}, 10)
    assert sentence == f"no providers found for {CID}: {JOIN_FIRST}"
