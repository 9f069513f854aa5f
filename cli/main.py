"""Entry point of the ``p2pshare`` command.

Only click and light p2pshare modules are imported at start-up: ``--help`` and
simple queries must not pay for libp2p or trio (over a second to import).  Each
command imports what it needs inside its function.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from p2pshare import __version__
from p2pshare.errors import JOIN_FIRST, ExitCode, P2PShareError, UserError, leaf_errors
from p2pshare.home import Home, resolve_home
from p2pshare.proto.paths import printable

from . import args
from .compute import compute
from .downloads import downloads, get
from .output import count, show
from .output import human_size as _size
from .private import seed, unshare
from .status_text import ready_text, status_text

# Long calls send progress events several times a second; this much silence means the
# daemon is stuck, and the CLI says so instead of waiting forever.
LONG_CALL_SILENCE = 300.0


class _UsageError(UserError):
    """A bad argument that click's own checks cannot see; exit 2 as docs/cli.md says."""

    exit_code = ExitCode.USAGE


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


class _Group(click.Group):
    """Turns p2pshare errors into one sentence on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except P2PShareError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=str),
    help="Node directory (default: $P2PSHARE_HOME, else the platform's user data dir).",
)
@click.version_option(__version__, prog_name="p2pshare")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """p2pshare: share files and spare compute directly between peers."""
    ctx.obj = resolve_home(home)


def _home(ctx: click.Context) -> Home:
    home = ctx.obj
    assert isinstance(home, Home)
    return home


@cli.command()
@click.option("--force", is_flag=True, help="Replace an existing node key (new identity).")
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Listen address to write into config.toml (repeatable).",
)
@json_option
@click.pass_context
def init(ctx: click.Context, force: bool, listen: tuple[str, ...], as_json: bool) -> None:
    """Create the node's home: config.toml and an Ed25519 node key."""
    from p2pshare.node.init import initialise  # noqa: PLC0415

    home = _home(ctx)
    listen = tuple(args.listen_addr(addr) for addr in listen)
    result = initialise(home, force=force, listen=listen)
    replaced = None if result.replaced_key is None else str(result.replaced_key)
    show(
        {
            "peer_id": result.peer_id,
            "home": str(home.root),
            "config": str(home.config_path),
            "replaced_key": replaced,
        },
        as_json,
        lambda r: (
            f"initialised node {r['peer_id']} in {r['home']}"
            + ("" if replaced is None else f"; the key it replaced is kept as {replaced}")
        ),
    )


@cli.command()
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--upload-rate",
    type=click.IntRange(min=0),
    default=None,
    metavar="BYTES_PER_S",
    help="Cap on upload to all peers together (overrides [transfer] upload_rate; 0: none).",
)
@click.option("--json", "as_json", is_flag=True, help="Announce readiness as one JSON line.")
@click.pass_context
def daemon(ctx: click.Context, log_level: str, upload_rate: int | None, as_json: bool) -> None:
    """Run the node in the foreground until Ctrl-C, SIGTERM or `p2pshare stop`."""
    import json  # noqa: PLC0415

    import trio  # noqa: PLC0415

    from p2pshare.node import logs  # noqa: PLC0415
    from p2pshare.node.daemon import ReadyInfo, serve  # noqa: PLC0415
    from p2pshare.node.malloc import keep_freed_buffers  # noqa: PLC0415

    # Everything the daemon creates in the home (SQLite's -wal and -shm, compute/,
    # job outputs, rotated logs) is private from its first instant. Files it writes
    # for the user (downloads, compute run -o) get their modes explicitly.
    # The umask we were started with is what a client that sends none gets.
    user_umask = os.umask(0o077)
    home = _home(ctx)
    # An existing home keeps its modes and is checked before the log goes into it:
    # one open to others is refused, not quietly closed after they may have changed
    # its files.
    if not home.root.exists():
        home.create()
    home.check_private()
    logs.configure(log_level, home.log_path)

    def on_ready(info: ReadyInfo) -> None:
        if as_json:
            doc = {
                "event": "ready",
                "peer_id": info.peer_id,
                "addrs": info.addrs,
                "listening": info.listening,
                "mapped": info.mapped,
                "socket": info.socket_path,
            }
            click.echo(json.dumps(doc))
        else:
            click.echo(ready_text(info))
        sys.stdout.flush()

    keep_freed_buffers()
    try:
        trio.run(serve, home, on_ready, upload_rate, user_umask)
    except BaseExceptionGroup as group:
        # trio's nurseries wrap a start-up error (a port in use...) in an
        # ExceptionGroup: the user gets its sentence, not the group's traceback.
        ours = [e for e in leaf_errors(group) if isinstance(e, P2PShareError)]
        if ours:
            raise ours[0] from None
        raise


@cli.command(name="id")
@json_option
@click.pass_context
def id_(ctx: click.Context, as_json: bool) -> None:
    """Show this node's peer ID and listen addresses."""
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "id")
    show(
        result,
        as_json,
        lambda r: "\n".join([f"peer ID: {r['peer_id']}", *(f"  {a}" for a in r["addrs"])]),
    )


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon's version, uptime, peers, transfer rates and announcements."""
    from p2pshare.control.client import call  # noqa: PLC0415

    home = _home(ctx)
    result = call(home, "status")

    show(result, as_json, lambda r: status_text(r, home))


@cli.command()
@json_option
@click.pass_context
def stop(ctx: click.Context, as_json: bool) -> None:
    """Stop the daemon and wait until it has exited."""
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    with ControlClient(_home(ctx)) as client:
        client.call("stop")
        client.wait_closed()
    show({"stopped": True}, as_json, lambda _: "daemon stopped")


def _share_line(share: dict[str, Any]) -> str:
    flags = [f for f, on in (("pinned", share["pinned"]), ("stored", share["stored"])) if on]
    if share["stale"]:
        flags.append("STALE")
    size = _size(share["size"])
    label = share["name"] or share["path"]
    if "ciphertext_size" in share and "recipients" not in share:
        # Fetched or seeded from another node: only its recipients can read it.
        label += " (encrypted copy)"
    elif share["name"] is None and share["stored"]:
        label += " (stored copy)"
    line = f"{share['cid']}  {size:>9}  {count(share['files'], 'file'):>11}  {label}" + (
        f"  [{', '.join(flags)}]" if flags else ""
    )
    if "recipients" in share:
        line += f"\n    private, for: {', '.join(share['recipients'])}"
    return line


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="A human-readable name stored in the manifest.")
@click.option(
    "--copy",
    is_flag=True,
    help="Keep a pinned snapshot in the node's store instead of serving the files in place.",
)
@click.option(
    "--to",
    "recipients",
    multiple=True,
    metavar="PEER_ID",
    help="Make a private share only this peer can read (repeat for more peers).",
)
@click.option(
    "--anyone-may-seed",
    is_flag=True,
    help="With --to: serve the ciphertext to peers not named too, so they can help seed.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Share files that look like private keys (id_rsa, *.pem with a key, .ssh/...) too.",
)
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@json_option
@click.pass_context
def share(
    ctx: click.Context,
    path: Path,
    name: str | None,
    copy: bool,
    recipients: tuple[str, ...],
    anyone_may_seed: bool,
    yes: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Share a file or directory; print its content ID and a ticket.

    With --to, the share is private: encrypted in the node's store, readable only by
    the peers named (and this node), while anyone may still verify and seed it.
    """
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    from .progress import ByteProgress  # noqa: PLC0415

    text = str(path.absolute())
    if printable(text) != text:
        raise UserError(
            f"cannot share {printable(text)}: its name is not valid UTF-8; rename it first"
        )
    if anyone_may_seed and not recipients:
        raise _UsageError("--anyone-may-seed applies to private shares only; add --to PEER_ID")
    params: dict[str, Any] = {"path": text, "copy": copy, "yes": yes}
    if recipients:
        params["to"] = [args.peer_id(peer) for peer in recipients]
        params["anyone_may_seed"] = anyone_may_seed
    if name is not None:
        if not name.strip():
            raise _UsageError(
                "a share's name cannot be empty; leave out --name to use the file's own name"
            )
        params["name"] = name
    home = _home(ctx)
    with (
        ControlClient(home, timeout=LONG_CALL_SILENCE) as client,
        ByteProgress("hashing", enabled=not (no_progress or as_json)) as bar,
    ):
        result = client.call("share", params, on_event=bar.on_event)

    show(result, as_json, lambda r: _shared_lines(r, home))


def _shared_lines(r: dict[str, Any], home: Home) -> str:
    """What ``share`` prints for people."""
    lines = [f"content ID: {r['cid']}", f"ticket:     {r['ticket']}"]
    if "recipients" in r:
        lines.append(f"private:    readable only by {', '.join(r['recipients'])}")
    if r.get("withheld"):
        lines.append(
            "announced:  never, so peers it is not for cannot tell it exists; "
            "give its recipients the ticket, which holds this node's addresses"
        )
    else:
        lines.append(f"announced:  {_announced(r.get('announced_to'), home)}")
    if r.get("unrevoked"):
        lines.append("unrevoked:  it was revoked with unshare --revoke; this node serves it again")
    lines += [f"skipped {s['path']}: {s['reason']}" for s in r["skipped"]]
    return "\n".join(lines)


def _announced(count: int | None, home: Home) -> str:
    if count is None:
        return f"going on in the background (`{home.command('status')}` shows when it is done)"
    if count == 0:
        return "to no peer yet: it is announced once this node connects to one"
    return f"findable now, the record is on {count} peer{'s' if count != 1 else ''}"


@cli.command(name="ls")
@json_option
@click.pass_context
def ls_(ctx: click.Context, as_json: bool) -> None:
    """List this node's shares."""
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "ls")
    show(
        result,
        as_json,
        lambda r: "\n".join(_share_line(s) for s in r["shares"]) or "no shares",
    )


def _cid_command(method: str, verb: str, doc: str) -> None:
    @cli.command(name=method, help=doc)
    @click.argument("cid")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, cid: str, as_json: bool) -> None:
        from p2pshare.control.client import call  # noqa: PLC0415

        result = call(_home(ctx), method, {"cid": args.content_id(cid)})
        show(result, as_json, lambda r: f"{verb} {r['cid']}")


_cid_command("pin", "pinned", "Protect CID's stored content from gc.")
_cid_command("unpin", "unpinned", "Let gc remove CID's stored content.")


@cli.command()
@json_option
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Delete unpinned stored content now."""
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "gc")

    def human(r: dict[str, Any]) -> str:
        line = f"removed {len(r['removed'])} item(s), freed {_size(r['freed_bytes'])}"
        if r.get("pinned"):
            line += (
                f"; kept {count(r['pinned'], 'pinned item')} ({_size(r['pinned_bytes'])}): "
                "unpin CID to let gc remove one"
            )
        return line

    show(result, as_json, human)


def no_providers_sentence(cid: str, lookup: dict[str, Any], timeout: float) -> str:
    """What an empty `find` did: ran out of time, or asked every peer it could find."""
    asked = lookup["queried"]
    peers = f"{asked} peer{'' if asked == 1 else 's'}"
    if lookup.get("timed_out"):
        return f"no providers found for {cid} within {timeout:g} s ({peers} asked by then)"
    if not asked:
        return f"no providers found for {cid}: {JOIN_FIRST}"
    return (
        f"no providers found for {cid}: the lookup asked {peers} and none knows a provider; "
        "check the content ID for a typo (content IDs carry no checksum; tickets do)"
    )


@cli.command()
@click.argument("cid")
@click.option("--timeout", type=args.FiniteFloatRange(0.1, 120), default=10.0, show_default=True)
@json_option
@click.pass_context
def find(ctx: click.Context, cid: str, timeout: float, as_json: bool) -> None:
    """List the peers that provide CID, found through the DHT."""
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    params = {"cid": args.content_id(cid), "timeout": timeout}
    with ControlClient(_home(ctx), timeout=timeout + 10) as client:
        result = client.call("find", params)
    if not result["providers"] and not as_json:
        raise UserError(no_providers_sentence(result["cid"], result["lookup"], timeout))

    def human(r: dict[str, Any]) -> str:
        return "\n".join(
            f"{p['peer_id']}\n" + "".join(f"  {a}\n" for a in p["addrs"]) for p in r["providers"]
        ).rstrip()

    show(result, as_json, human)


@cli.command()
@json_option
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """List connected peers with their ping latency, transfer rates and addresses."""
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "peers")

    def human(r: dict[str, Any]) -> str:
        if not r["peers"]:
            return "no connected peers"
        from .top import human_bps  # noqa: PLC0415

        lines = []
        for p in r["peers"]:
            latency = "?" if p["latency_ms"] is None else f"{p['latency_ms']:.1f} ms"
            rates = f"up {human_bps(p['up_bps']):>11}  down {human_bps(p['down_bps']):>11}"
            lines.append(f"{p['peer_id']}  {latency:>9}  {rates}  {' '.join(p['addrs'])}")
        return "\n".join(lines)

    show(result, as_json, human)


@cli.command()
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Draw this many times, a second apart, then exit (default: until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON snapshot and exit.")
@click.pass_context
def top(ctx: click.Context, count: int | None, as_json: bool) -> None:
    """Watch the node live: transfer rates per peer, DHT lookups, jobs (Ctrl-C ends)."""
    from p2pshare.control.client import call  # noqa: PLC0415

    from .top import run_top  # noqa: PLC0415

    if as_json and count is not None:
        raise _UsageError("top --json prints one snapshot; leave out --count")
    home = _home(ctx)
    if as_json:
        show(call(home, "metrics"), as_json, str)
        return
    try:
        run_top(lambda: call(home, "metrics"), count)
    except KeyboardInterrupt:
        return


@cli.command()
@click.argument("multiaddr")
@json_option
@click.pass_context
def connect(ctx: click.Context, multiaddr: str, as_json: bool) -> None:
    """Dial a peer given as /ip4/ADDR/tcp/PORT/p2p/PEER_ID and remember it.

    /dns4/NAME/... is resolved first; RELAY_ADDR/p2p/RELAY_ID/p2p-circuit/p2p/PEER_ID
    reaches the peer through that relay.
    """
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "connect", {"addr": args.peer_addr(multiaddr)})
    show(result, as_json, lambda r: f"connected to {r['peer_id']}")


@cli.command()
@json_option
def demo(as_json: bool) -> None:
    """Three daemons on 127.0.0.1 share, find (DHT) and fetch a file, then clean up."""
    from p2pshare.demo import run_demo  # noqa: PLC0415

    report = run_demo(progress=None if as_json else click.echo)
    if as_json:
        show(report, as_json, str)


cli.add_command(compute)
cli.add_command(get)
cli.add_command(downloads)
cli.add_command(seed)
cli.add_command(unshare)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="p2pshare")
