"""``p2pshare compute offer|peers|run``: spare compute, given and used."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pshare.errors import ExitCode, UsageError
from p2pshare.home import Home

from . import args as checked
from .args import FiniteFloatRange
from .output import human_size as _size
from .output import kv_lines, show

if TYPE_CHECKING:
    from p2pshare.proto.control import Event

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
# A job reports progress as its workers move on; a job's own wall limit is the bound.
RUN_SILENCE = 900.0


def _home(ctx: click.Context) -> Home:
    home = ctx.obj
    assert isinstance(home, Home)
    return home


@click.group()
def compute() -> None:
    """Offer spare compute to peers, list workers, run WebAssembly jobs on them."""


@compute.command()
@click.option("--on/--off", "enabled", default=None, help="Take jobs from peers, or stop.")
@click.option("--slots", type=click.IntRange(1, 256), help="Jobs run at once.")
@click.option("--max-fuel", type=click.IntRange(1), help="Most fuel one job may use.")
@click.option("--max-memory", type=click.IntRange(1), help="Most bytes of memory per job.")
@click.option("--max-wall", type=click.IntRange(1), help="Most seconds one job may run.")
@click.option("--max-output", type=click.IntRange(0), help="Most bytes of stdout per job.")
@click.option("--max-input", type=click.IntRange(0), help="Most input bytes per job.")
@click.option(
    "--max-load", type=FiniteFloatRange(0), help="Take jobs only below this load per CPU."
)
@json_option
@click.pass_context
def offer(ctx: click.Context, /, as_json: bool, enabled: bool | None, **limits: Any) -> None:
    """Show this node's compute offer, or change it until the daemon stops.

    To keep a change, put it in the [compute] section of config.toml.
    """
    from p2pshare.control.client import call  # noqa: PLC0415

    changes = {key: value for key, value in limits.items() if value is not None}
    if enabled is not None:
        changes["enabled"] = enabled
    result = call(_home(ctx), "compute_offer", {"set": changes})

    def human(r: dict[str, Any]) -> str:
        state = "on" if r["enabled"] else "off"
        if r["enabled"] and not r["ready"]:
            state += " (starting workers)"
        return kv_lines(
            [
                ("compute", state),
                ("slots", f"{r['slots']} ({r['running']} running, {r['free']} free)"),
                ("max fuel", r["max_fuel"]),
                ("max memory", _size(r["max_memory"])),
                ("max wall", f"{r['max_wall']} s"),
                ("max output", _size(r["max_output"])),
                ("max input", _size(r["max_input"])),
                ("max load", r["max_load"] or "any"),
                ("load now", r["load_per_cpu"]),
                ("speed", f"{r['speed_fuel_per_s']:.3g} fuel/s per slot"),
                ("jobs done", r["jobs_done"]),
            ]
        )

    show(result, as_json, human)


@compute.command()
@click.option("--timeout", type=FiniteFloatRange(0.1, 60), default=5.0, show_default=True)
@json_option
@click.pass_context
def peers(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """List workers found through the DHT, with their signed offers."""
    from p2pshare.control.client import ControlClient  # noqa: PLC0415

    with ControlClient(_home(ctx), timeout=timeout + 20) as client:
        result = client.call("compute_peers", {"timeout": timeout})

    def human(r: dict[str, Any]) -> str:
        if not r["workers"]:
            return "no workers found"
        return "\n".join(
            f"{w['peer_id']}  {w['free']}/{w['slots']} free  "
            f"{w['speed_fuel_per_s']:.3g} fuel/s  memory {_size(w['max_memory'])}  "
            f"wall {w['max_wall']} s"
            for w in r["workers"]
        )

    show(result, as_json, human)


@compute.command()
@json_option
@click.pass_context
def outputs(ctx: click.Context, as_json: bool) -> None:
    """List the job outputs this worker keeps for requesters (not shown by `ls`).

    Each is served only to the peer that ran the job, and gc reclaims it once that
    peer fetched it or after [compute] output_keep_seconds.
    """
    from p2pshare.control.client import call  # noqa: PLC0415

    result = call(_home(ctx), "compute_outputs")

    def human(r: dict[str, Any]) -> str:
        lines = [
            f"{o['cid']}  {_size(o['size'])}  for {', '.join(o['requesters'])}  "
            + ("fetched" if o["keep_until"] is None else f"kept until {_utc(o['keep_until'])}")
            for o in r["outputs"]
        ]
        return "\n".join(lines) or "no job outputs"

    show(result, as_json, human)


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _input(text: str) -> list[str]:
    """``FILE``, ``GUEST=FILE`` or ``GUEST=CID`` as [guest path, absolute path or CID].

    What is not an existing file must parse as a CID or ticket: a usage error
    otherwise, as for ``get``, before the daemon is asked.
    """
    guest, sep, ref = text.partition("=")
    if not sep:
        guest, ref = Path(text).name, text
    if Path(ref).exists():
        return [guest, str(Path(ref).absolute())]
    try:
        return [guest, checked.content_ref(ref)]
    except UsageError as exc:
        raise UsageError(f"{ref!r} is no file here, and {exc}") from None


class _JobProgress:
    """One line on stderr each time a worker's state changes."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._seen: dict[str, str] = {}

    def on_event(self, event: Event) -> None:
        if not self._enabled or event.event != "progress":
            return
        data = event.data
        worker = data.get("worker")
        if not isinstance(worker, dict):
            phase = data.get("phase")
            if isinstance(phase, str) and self._seen.get("") != phase:
                self._seen[""] = phase
                click.echo(f"{phase.replace('_', ' ')}...", err=True)
            return
        peer, state = str(worker.get("peer_id")), str(worker.get("state"))
        if self._seen.get(peer) != state:
            self._seen[peer] = state
            detail = worker.get("refused") or worker.get("status") or ""
            click.echo(f"  worker {peer[-12:]}: {state} {detail}".rstrip(), err=True)


@compute.command()
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="[NAME=]FILE|NAME=CID",
    help="A file the job can read at /NAME (default: the file's name); repeatable.",
)
@click.option("--stdin", "stdin", metavar="FILE|CID", help="What the job reads on stdin.")
@click.option("--arg", "args", multiple=True, help="An argument for the job; repeatable.")
@click.option("--replicas", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--fuel", type=click.IntRange(1), help="Most fuel (instructions) the job may use.")
@click.option("--memory", type=click.IntRange(1), help="Most bytes of memory.")
@click.option("--timeout", type=click.IntRange(1), help="Most seconds the job may run.")
@click.option("--max-output", type=click.IntRange(0), help="Most bytes of stdout.")
@click.option(
    "-o",
    "--output",
    required=True,
    # A str: a Path would drop the trailing slash of -o DIR/.
    type=click.Path(),
    help="Where stdout goes; DIR/ (with the slash) writes DIR/MODULE.out.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing file or link at -o (never a directory)."
)
@click.option(
    "--yes",
    is_flag=True,
    help="Send files that look like private keys (id_rsa, *.pem with a key, .ssh/...) too.",
)
@click.option("--no-progress", is_flag=True, help="Do not show the workers' progress.")
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    module: Path,
    inputs: tuple[str, ...],
    stdin: str | None,
    args: tuple[str, ...],
    replicas: int,
    fuel: int | None,
    memory: int | None,
    timeout: int | None,
    max_output: int | None,
    output: str,
    force: bool,
    yes: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Run MODULE (.wasm, or WAT text in a .wat file) on REPLICAS workers.

    The module and input files are shared for the job's duration; workers fetch them,
    run the job in their sandbox and sign a receipt.  Replicas that agree on the
    output make the result verified.  Exit status: 0 verified and the job ended ok,
    5 the job failed (trap, limit, non-zero exit), 6 the replicas disagreed.
    """
    from p2pshare.control.client import ControlClient  # noqa: PLC0415
    from p2pshare.modes import read_umask  # noqa: PLC0415

    limits = {
        key: value
        for key, value in (
            ("fuel", fuel),
            ("memory", memory),
            ("wall", timeout),
            ("output", max_output),
        )
        if value is not None
    }
    params: dict[str, Any] = {
        "module": str(module.absolute()),
        "inputs": [_input(text) for text in inputs],
        "stdin": None if stdin is None else _input(f"stdin={stdin}")[1],
        "args": list(args),
        "limits": limits,
        "replicas": replicas,
        "dest": checked.output_path(output),
        "force": force,
        "yes": yes,
        # The daemon writes the output, but with the mode this user's umask gives.
        "umask": read_umask(),
    }
    progress = _JobProgress(enabled=not (no_progress or as_json))
    try:
        with ControlClient(_home(ctx), timeout=RUN_SILENCE) as client:
            result = client.call("compute_run", params, on_event=progress.on_event)
    except KeyboardInterrupt:
        click.echo("interrupted: the job was cancelled on every worker", err=True)
        ctx.exit(130)
    show(result, as_json, _describe)
    ctx.exit(_exit_status(result))


def _describe(r: dict[str, Any]) -> str:
    agreeing = sum(1 for w in r["workers"] if w["agrees"])
    lines = [f"job {r['job_id'][:16]}: {r['status'] or 'no agreement'}"]
    if r.get("exit_code"):
        lines[0] += f" (exit {r['exit_code']})"
    if r["verified"]:
        lines.append(f"verified: {agreeing} of {r['replicas']} workers agree")
    elif r["dissenters"]:
        lines.append("NOT verified: workers disagree: " + ", ".join(r["dissenters"]))
    else:
        timeouts = sum(1 for w in r["workers"] if w["status"] == "timeout")
        line = f"NOT verified: {agreeing} of {r['replicas']} workers gave a result that counts"
        if timeouts:
            line += f"; {timeouts} timed out, and a timeout is never evidence"
        lines.append(line)
    if r["output"]:
        lines.append(f"output: {r['output']} ({_size(r['output_size'])})")
    lines.append(
        f"input bytes moved: {_size(r['input_bytes_moved'])}; {r['elapsed_s']:.2f} s in all"
    )
    return "\n".join(lines)


def _exit_status(result: dict[str, Any]) -> int:
    if result["dissenters"] or result["status"] is None:
        return ExitCode.DISAGREEMENT
    if result["status"] != "ok":
        # Failed, whether verified or not (a timeout never is): no worker contradicted it.
        return ExitCode.JOB_FAILED
    return ExitCode.OK if result["verified"] else ExitCode.DISAGREEMENT
