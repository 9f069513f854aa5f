"""Command-line arguments checked before the daemon is asked: a bad one is a usage error.

The daemon refuses them too, but its refusal is an operation failure (exit 1);
docs/cli.md promises exit 2 for a bad argument, also when no daemon runs.
Only light modules are imported here (see main.py).
"""

from __future__ import annotations

from p2pshare.errors import UsageError
from p2pshare.proto.errors import MalformedReferenceError

PEER_ADDR_EXAMPLE = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."


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


def peer_addr(text: str) -> str:
    """A multiaddr ending in /p2p/<peer ID>; UsageError otherwise."""
    import multiaddr  # noqa: PLC0415

    try:
        names = [p.name for p in multiaddr.Multiaddr(text).protocols()]
    except Exception as exc:  # noqa: BLE001 - multiaddr raises many unrelated types
        raise UsageError(
            f"{text!r} is not a peer address like {PEER_ADDR_EXAMPLE}: {exc}"
        ) from None
    if not names or names[-1] != "p2p":
        raise UsageError(
            f"{text!r} does not end in /p2p/<peer ID>; "
            f"a peer address looks like {PEER_ADDR_EXAMPLE}"
        )
    return text


def listen_addr(text: str) -> str:
    """A listen address for ``init --listen``; UsageError says what is wrong with it."""
    from p2pshare.proto.listen import parse_listen_addr  # noqa: PLC0415

    try:
        parse_listen_addr(text)
    except ValueError as exc:
        raise UsageError(f"--listen {text!r} {exc}") from None
    return text
