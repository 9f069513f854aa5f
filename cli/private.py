"""Private-share verbs: ``seed`` (help seed a private share, unread) and ``unshare --revoke``.

``share --to`` itself is in main.py with the other ``share`` options; docs/store.md,
"Private shares", describes the whole.
"""

from __future__ import annotations

from typing import Any

import click

from p2pshare.home import Home

from . import args
from .output import human_size as _size
from .output import show

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
# Fetching content may stay silent between progress events for this long.
LONG_CALL_SILENCE = 300.0


def _home(ctx: click.Context) -> Home:
    home = ctx.obj
    assert isinstance(home, Home)
    return home


@click.command()
@click.argument("cid")
@click.option(
    "--revoke",
    is_flag=True,
    help="Also refuse every later request for CID, should this node hold it again.",
)
@json_option
@click.pass_context
def unshare(ctx: click.Context, cid: str, revoke: bool, as_json: bool) -> None:
    """Stop sharing CID (stored copies are deleted).

    --revoke cannot take back what was delivered: a recipient keeps its copy and its
    key.  It only makes this node refuse all further requests for CID.
    """
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "unshare", {"cid": args.content_id(cid), "revoke": revoke})

    def human(r: dict[str, Any]) -> str:
        if not r["revoked"]:
            return f"no longer sharing {r['cid']}"
        return (
            f"revoked {r['cid']}: this node refuses all further requests for it; "
            "copies already delivered stay readable by their recipients"
        )

    show(result, as_json, human)


@click.command()
@click.argument("ref", metavar="CID|TICKET")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@json_option
@click.pass_context
def seed(ctx: click.Context, ref: str, no_progress: bool, as_json: bool) -> None:
    """Fetch a private share's encrypted content into this node's store to help seed it.

    Every chunk is verified as for get; nothing is decrypted, and no peer can read it
    unless the share was sealed to them.
    """
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    from .progress import ByteProgress  # noqa: PLC0415

    params = {"ref": args.content_ref(ref), "seed_only": True}
    with (
        ControlClient(_home(ctx), timeout=LONG_CALL_SILENCE) as client,
        ByteProgress("fetching", enabled=not (no_progress or as_json), min_bytes=0) as bar,
    ):
        result = client.call("get", params, on_event=bar.on_event)
    show(
        result,
        as_json,
        lambda r: f"seeding {r['cid']} ({_size(r['size'])} encrypted, unreadable here)",
    )
