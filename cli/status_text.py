"""What ``p2pshare status`` prints for people (``--json`` prints the reply itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .output import count, kv_lines
from .output import human_size as _size

if TYPE_CHECKING:
    from p2pshare.home import Home
    from p2pshare.node.daemon import ReadyInfo


def ready_text(info: ReadyInfo) -> str:
    """The daemon's ready line: where it listens, what a router maps to it, and any
    other address it announces (``[network] announce``), each under its own label."""
    lines = [f"p2pshare daemon ready: peer {info.peer_id}"]
    lines += [f"  listening on {addr}" for addr in info.listening]
    lines += [f"  mapped by the router at {addr}" for addr in info.mapped]
    shown = {*info.listening, *info.mapped}
    lines += [f"  announced at {addr}" for addr in info.addrs if addr not in shown]
    lines.append(f"  control socket {info.socket_path}")
    return "\n".join(lines)


def status_text(r: dict[str, Any], home: Home) -> str:
    """The human form of ``status``."""
    lines = kv_lines(
        [
            ("peer ID", r["peer_id"]),
            ("version", r["version"]),
            ("uptime", f"{r['uptime_s']:.0f} s"),
            ("peers", f"{r['peers']} ({r['connections']} connections)"),
            ("traffic", _traffic(r["traffic"])),
            ("DHT table", f"{r['routing_table']} peers"),
            ("announcing", f"{r['provide_queue']} under way"),
            ("reachability", _reachability(r)),
            ("relays", _relays(r)),
            ("port mapping", _port_mapping(r)),
            ("home", r["home"]),
        ]
    )
    lines += f"\n{'compute:':<{_STATUS_WIDTH}} {_compute_line(r['compute'], home)}"
    for share in r["shares"]:
        if share["stale"]:
            state = "stale, not announced"
        elif share.get("withheld"):
            state = f"never announced: {share['withheld']}"
        elif share["provided_at"] is None:
            state = "not announced yet"
        else:
            state = (
                f"announced to {count(share['provided_to'], 'peer')} {_ago(share['provided_at'])}"
            )
        lines += f"\n  {share['cid']}  {state}"
    return lines


# The width of the longest label ("reachability:"), so the compute line lines up.
_STATUS_WIDTH = len("reachability:")


def _traffic(t: dict[str, Any]) -> str:
    from .top import human_bps  # noqa: PLC0415

    return (
        f"up {human_bps(t['up_bps'])}, down {human_bps(t['down_bps'])} "
        f"({_size(t['bytes_sent'])} sent, {_size(t['bytes_received'])} received)"
    )


def _compute_line(offer: dict[str, Any] | None, home: Home) -> str:
    if offer is None or not offer["enabled"]:
        return f"off (turn it on with: {home.command('compute', 'offer', '--on')})"
    state = "on" if offer["ready"] else "on, starting workers"
    return (
        f"{state}, {count(offer['slots'], 'slot')} ({offer['running']} running, "
        f"{offer['free']} free), {count(offer['jobs_done'], 'job')} done"
    )


def _reachability(r: dict[str, Any]) -> str:
    """``private, relayed at ADDR`` and the like: what peers can reach this node at."""
    text = str(r.get("reachability", "unknown"))
    if r.get("confirmed_addrs"):
        text += f" at {', '.join(r['confirmed_addrs'])}"
    if r.get("relayed_at"):
        text += f"; relayed at {', '.join(r['relayed_at'])}"
    if r.get("relay_service"):
        text += "; relaying for others"
    return text


def _relays(r: dict[str, Any]) -> str:
    """Each configured relay and whether it holds a slot for this node, and if not why."""
    relays = r.get("relays") or []
    if not relays:
        return "none configured"
    return "; ".join(
        f"{relay['relay']} {relay['state']}"
        + (f" ({relay['reason']})" if relay.get("reason") else "")
        for relay in relays
    )


def _port_mapping(r: dict[str, Any]) -> str:
    """``natpmp mapped 203.0.113.7 (libp2p 4001->4001, ...)``, ``off``, ``... failed: why``."""
    mapping = r.get("port_mapping") or {}
    text = str(mapping.get("line", "off"))
    refuted = [a for a, v in (mapping.get("addrs") or {}).items() if v == "refuted"]
    if refuted:
        text += f"; not reachable at {', '.join(refuted)} (AutoNAT), not announced"
    return text


def _ago(timestamp: int) -> str:
    import time  # noqa: PLC0415

    seconds = max(0, int(time.time()) - timestamp)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
