"""``p2pshare top``: the node's rates, peers, DHT and jobs, redrawn once a second.

The screen is built by :func:`render` from one ``metrics`` reply, so what it shows
is tested without a terminal; the loop only fetches, draws and waits.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .output import human_size

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Group

# Peers shown, busiest first; the rest are summed in one line.
TOP_PEERS = 15


def human_bps(rate: float) -> str:
    return f"{human_size(round(rate))}/s"


def _node_table(m: dict[str, Any]) -> Any:
    from rich.table import Table  # noqa: PLC0415 - rich costs ~50 ms to import

    dht = m["dht"]
    lookups = dht["lookups"]
    mean = f"{dht['lookup_seconds_total'] / lookups:.2f} s" if lookups else "-"
    per_lookup = f"{dht['messages'] / lookups:.1f}" if lookups else "-"
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(m["jobs_run"].items())) or "none"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("up", f"{human_bps(m['up_bps'])}  ({human_size(m['bytes_sent'])} since start)")
    table.add_row(
        "down", f"{human_bps(m['down_bps'])}  ({human_size(m['bytes_received'])} since start)"
    )
    table.add_row("peers", f"{m['peers']} ({m['connections']} connections)")
    table.add_row("chunks", f"{m['chunks_verified']} verified, {m['chunks_rejected']} rejected")
    table.add_row(
        "DHT",
        f"{lookups} lookups, mean {mean}, {per_lookup} messages per lookup; "
        f"{dht['provides']} provides, {m['provide_queue']} under way",
    )
    table.add_row("jobs run", jobs)
    return table


def _peer_table(per_peer: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=None, header_style="bold")
    table.add_column("peer")
    table.add_column("up", justify="right")
    table.add_column("down", justify="right")
    table.add_column("sent", justify="right")
    table.add_column("received", justify="right")
    busiest = sorted(
        per_peer.items(), key=lambda item: (-(item[1]["up_bps"] + item[1]["down_bps"]), item[0])
    )
    for peer, row in busiest[:TOP_PEERS]:
        table.add_row(
            peer,
            human_bps(row["up_bps"]),
            human_bps(row["down_bps"]),
            human_size(row["bytes_sent"]),
            human_size(row["bytes_received"]),
        )
    if len(busiest) > TOP_PEERS:
        table.add_row(f"... and {len(busiest) - TOP_PEERS} more", "", "", "", "")
    return table


def render(m: dict[str, Any]) -> Group:
    """One screen of ``top`` from one ``metrics`` reply (docs/control-api.md)."""
    from rich.console import Group  # noqa: PLC0415

    parts = [_node_table(m)]
    if m["per_peer"]:
        parts += ["", _peer_table(m["per_peer"])]
    return Group(*parts)


def run_top(
    fetch: Callable[[], dict[str, Any]],
    count: int | None,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw every ``interval`` seconds, ``count`` times (None: until Ctrl-C)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    console = Console()
    shown = 0
    with Live(render(fetch()), console=console, auto_refresh=False) as live:
        shown += 1
        while count is None or shown < count:
            sleep(interval)
            live.update(render(fetch()), refresh=True)
            shown += 1
