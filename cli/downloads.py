"""``p2pshare get`` and ``p2pshare downloads [cancel]``: fetching content, unfinished downloads."""

from __future__ import annotations

from typing import Any

import click

from p2pshare.errors import UserError
from p2pshare.home import Home

from . import args
from .output import count, human_rate, show
from .output import human_size as _size

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
# Long calls send progress events several times a second; this much silence means the
# daemon is stuck, and the CLI says so instead of waiting forever.
LONG_CALL_SILENCE = 300.0


def _home(ctx: click.Context) -> Home:
    home = ctx.obj
    assert isinstance(home, Home)
    return home


@click.command()
@click.argument("ref", metavar="CID|TICKET")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    # A str: a Path would drop the trailing slash of -o DIR/.
    type=click.Path(),
    help="Where to put the file or directory; DIR/ (with the slash) puts it in DIR under its name.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing file or link at -o (never a directory)."
)
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@json_option
@click.pass_context
def get(
    ctx: click.Context, ref: str, output: str, force: bool, no_progress: bool, as_json: bool
) -> None:
    """Download CID (or a ticket) from every peer that has it, verifying each chunk.

    The daemon does the work and resumes the download at its next start if it stops.
    Ctrl-C pauses the download, keeping what was verified: run the same command again
    to resume it; `p2pshare downloads` lists unfinished downloads.
    """
    from p2pshare.control.client import ControlClient  # noqa: PLC0415
    from p2pshare.errors import ControlCallError  # noqa: PLC0415
    from p2pshare.modes import read_umask  # noqa: PLC0415

    from .progress import ByteProgress  # noqa: PLC0415

    # The daemon creates the files, but with the modes this user's umask gives.
    dest = args.output_path(output)
    params = {"ref": args.content_ref(ref), "dest": dest, "force": force, "umask": read_umask()}
    try:
        with (
            ControlClient(_home(ctx), timeout=LONG_CALL_SILENCE) as client,
            ByteProgress("downloading", enabled=not (no_progress or as_json), min_bytes=0) as bar,
        ):
            result = client.call("get", params, on_event=bar.on_event)
    except ControlCallError as exc:
        # The daemon answers every get it keeps running; a connection closed without
        # an answer means it stopped (or crashed) and kept the download for its restart.
        if exc.code == "closed":
            raise UserError(
                "the daemon stopped before the download finished; it resumes when the "
                f"daemon starts again ({_home(ctx).command('daemon')}), and the same get then "
                "follows it"
            ) from None
        raise
    except KeyboardInterrupt:
        click.echo(
            "interrupted: the download is paused; run the same command to resume it, "
            f"or see: {_home(ctx).command('downloads')}",
            err=True,
        )
        ctx.exit(130)

    show(result, as_json, _saved_line)


def _download_line(d: dict[str, Any]) -> str:
    if d["chunks"]:
        done = f"{100 * d['verified_chunks'] // d['chunks']:>3}% of {_size(d['size'])}"
    else:
        done = "no manifest yet"
    state = d["state"]
    if d["retry_in_s"] is not None:
        state += f" in {d['retry_in_s']:.0f} s"
    line = f"{d['cid']}  {state:<16}  {done:<18}  {d['destination']}"
    return line + (f"\n    {d['error']}" if d["error"] else "")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def downloads(ctx: click.Context, as_json: bool) -> None:
    """List unfinished downloads (running, retrying, paused or failed)."""
    if ctx.invoked_subcommand is not None:
        return
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "downloads")
    show(
        result,
        as_json,
        lambda r: "\n".join(_download_line(d) for d in r["downloads"]) or "no unfinished downloads",
    )


@downloads.command(name="cancel")
@click.argument("cid")
@json_option
@click.pass_context
def downloads_cancel(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Stop the download of CID and delete its partial file and its record."""
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    params = {"cid": args.content_id(cid)}
    with ControlClient(_home(ctx), timeout=LONG_CALL_SILENCE) as client:
        result = client.call("cancel_download", params)
    show(result, as_json, lambda r: f"cancelled the download of {r['cid']} to {r['destination']}")


def _saved_line(r: dict[str, Any]) -> str:
    # Content this node already held is copied from its own store (docs/transfer.md).
    if (r["paths"] and set(r["paths"].values()) == {"local"}) or (
        r.get("private") and not r["peers"]
    ):
        source = "this node's own store"
    else:
        source = count(len(r["peers"]), "peer")
    text = (
        f"saved {r['destination']} ({_size(r['size'])}, {count(r['files'], 'file')}) "
        f"in {r['elapsed_s']:.2f} s ({human_rate(r['size'], r['elapsed_s'])}) from {source}"
    )
    # "local" is said by the source above; the rest name how peers' data came.
    if paths := sorted(set(r.get("paths", {}).values()) - {"local"}):
        text += f" over {', '.join(paths)}"
    if r.get("private"):
        text += "; a private share, decrypted for this node"
    if r["resumed_chunks"]:
        text += f"; resumed with {r['resumed_chunks']} of {r['chunks']} chunks already here"
    if r["banned"]:
        text += f"; banned for bad data: {', '.join(r['banned'])}"
    return text
