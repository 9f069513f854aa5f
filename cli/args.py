"""Command-line arguments checked before the daemon is asked: a bad one is a usage error.

The daemon refuses them too, but its refusal is an operation failure (exit 1);
docs/cli.md promises exit 2 for a bad argument, also when no daemon runs.
Only light modules are imported here (see main.py).
"""

from __future__ import annotations

import math
import os
from typing import Any

import click

from p2pshare.errors import UsageError
from p2pshare.proto.errors import MalformedReferenceError


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which compare as inside any range.

    Every float option of the CLI takes this type: click's FloatRange lets
    ``--timeout nan`` through to the daemon.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def content_id(text: str) -> str:
    """A content ID as typed; UsageError when it does not parse."""
    from p2pshare.proto.cid import ContentId  # noqa: PLC0415 - only for verbs taking a CID

    try:
        ContentId.parse(text)
    except MalformedReferenceError as exc:
        raise UsageError(str(exc)) from None
    return text


def content_ref(text: str) -> str:
    """A content ID or a ticket, as ``get`` takes it; UsageError when neither parses."""
    from p2pshare.proto.ticket import parse_content_ref  # noqa: PLC0415

    try:
        parse_content_ref(text.strip())
    except MalformedReferenceError as exc:
        raise UsageError(str(exc)) from None
    return text


def peer_id(text: str) -> str:
    """An Ed25519 peer ID (12D3KooW...), as ``share --to`` takes it; UsageError otherwise."""
    from p2pshare.proto.keys import public_key_from_peer_id  # noqa: PLC0415

    try:
        public_key_from_peer_id(text)
    except ValueError:
        raise UsageError(
            f"--to {text!r} is not a peer ID (12D3KooW..., as `p2pshare id` prints it)"
        ) from None
    return text


def peer_addr(text: str) -> str:
    """A TCP multiaddr ending in /p2p/<peer ID>, as the daemon dials; UsageError otherwise."""
    from p2pshare.proto.peeraddr import parse_peer_addr  # noqa: PLC0415

    try:
        parse_peer_addr(text)
    except ValueError as exc:
        raise UsageError(f"{text!r} {exc}") from None
    return text


def listen_addr(text: str) -> str:
    """A listen address for ``init --listen``; UsageError says what is wrong with it."""
    from p2pshare.proto.listen import parse_listen_addr  # noqa: PLC0415

    try:
        parse_listen_addr(text)
    except ValueError as exc:
        raise UsageError(f"--listen {text!r} {exc}") from None
    return text


def output_path(text: str) -> str:
    """``-o`` as the daemon takes it: absolute and normalised (``-o ..`` names the parent
    directory), with a link at its end not followed (``--force`` replaces the link, never
    its target), and a trailing slash kept: ``-o DIR/`` puts the content in DIR under its
    own name."""
    absolute = os.path.abspath(text)  # noqa: PTH100 - resolve() would follow a final link
    if text.endswith("/") and not absolute.endswith("/"):
        absolute += "/"
    return absolute
