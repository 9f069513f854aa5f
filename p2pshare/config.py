"""config.toml: typed sections, defaults, and errors that name the file, line and key.

Each section is a frozen dataclass; a field's ``metadata["doc"]`` documents it.  The
template written by ``p2pshare init`` and the reference in docs/configuration.md
are generated from these classes, so code, defaults and docs cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from p2pshare.errors import ConfigError, UserError
from p2pshare.proto import jobspec
from p2pshare.proto.listen import parse_host_port, parse_listen_addr
from p2pshare.proto.peeraddr import parse_peer_addr

if TYPE_CHECKING:
    from pathlib import Path

_TOML_POS_RE = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)")


def _opt(default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _check_multiaddr(value: str) -> str | None:
    parts = value.split("/")
    if (
        not value.startswith("/")
        or len(parts) < 5
        or parts[1] not in {"ip4", "ip6", "dns4", "dns6", "dns"}
    ):
        return "is not a multiaddr like /ip4/0.0.0.0/tcp/4001"
    return None


@dataclass(frozen=True)
class NetworkConfig:
    """[network]: how this node reaches and is reached by peers."""

    listen: tuple[str, ...] = _opt(
        ["/ip4/0.0.0.0/tcp/4001"],
        "Multiaddrs the libp2p host listens on: /ip4/IP/tcp/PORT or /ip6/IP/tcp/PORT, at "
        "least one; port 0 picks a free port. The daemon exits if any cannot be bound.",
    )
    announce: tuple[str, ...] = _opt(
        [],
        "Addresses to tell peers instead of the listen addresses (e.g. a public IP), in "
        "identify, `p2pshare id`, tickets and DHT records alike; empty: the listen "
        "addresses, with 0.0.0.0 expanded to this machine's interfaces and loopback left "
        "out unless nothing else is there.",
    )
    bootstrap: tuple[str, ...] = _opt(
        [],
        "Peers to join the network through, as multiaddrs ending in /p2p/<peer ID>.",
    )
    mdns: bool = _opt(
        default=False, doc="Find and connect to peers on the local network with mDNS."
    )
    connect_timeout: float = _opt(10.0, "Seconds to wait for one dial to succeed.")
    max_connections: int = _opt(
        300, "Most libp2p connections open at once, and most data channels served at once."
    )
    streams_per_peer: int = _opt(64, "Most inbound streams one peer may have open at once.")
    dht_requests_per_second: float = _opt(
        50.0, "Inbound DHT requests accepted per second from one peer (bursts of 4x)."
    )
    reprovide_interval: float = _opt(
        43200.0,
        "Seconds between re-announcements of every share; provider records live 48 h.",
    )
    refresh_interval: float = _opt(600.0, "Seconds between DHT routing-table refreshes.")
    relays: tuple[str, ...] = _opt(
        [],
        "Relays (multiaddrs ending in /p2p/<peer ID>) this node reserves a slot on, so peers "
        "can reach it through them when it is behind NAT (docs/discovery.md).",
    )
    relay_service: bool = _opt(
        default=False,
        doc="Relay connections for peers behind NAT (circuit relay v2), within the limits below.",
    )
    relay_max_reservations: int = _opt(32, "Relay service: most peers holding a slot at once.")
    relay_max_circuits: int = _opt(
        8, "Relay service: most relayed connections open at once to one peer holding a slot."
    )
    relay_circuit_bytes: int = _opt(
        256 << 20, "Relay service: most bytes one relayed connection carries, both ways together."
    )
    relay_circuit_seconds: int = _opt(
        3600, "Relay service: longest life of one relayed connection."
    )
    port_mapping: str = _opt(
        "off",
        'Ask the home router to forward the libp2p and data-channel ports: "off" (never '
        'ask), "natpmp", "upnp", or "auto" (NAT-PMP, then UPnP). IPv4 only; a mapped '
        "address is announced until AutoNAT shows it unreachable (docs/discovery.md). A "
        "node listening only on loopback is never mapped (no router forwards there); "
        "status says so.",
    )
    natpmp_gateway: str = _opt(
        "",
        "IPv4 address of the NAT-PMP router; empty: the default route's gateway.",
    )
    upnp_root_url: str = _opt(
        "",
        "URL of the UPnP router's root description (e.g. http://192.168.1.1:5000/rootDesc.xml); "
        "empty: find the router by SSDP discovery.",
    )


@dataclass(frozen=True)
class StoreConfig:
    """[store]: how shares are cut into chunks and how much stored content is kept."""

    chunk_size: int = _opt(
        1 << 20,
        "Chunk size in bytes for new shares: a power of two from 16384 to 16777216.",
    )
    quota_bytes: int = _opt(
        10 << 30,
        "Stored content (share --copy snapshots and compute job outputs) beyond this many "
        "bytes is removed by gc, oldest unpinned first; pinned content is never removed, "
        "and a worker refuses a job whose max output would not fit.",
    )


@dataclass(frozen=True)
class TransferConfig:
    """[transfer]: moving chunks between peers."""

    upload_rate: int = _opt(
        0, "Most bytes per second sent to all peers together; 0 means no limit."
    )
    data_channel: bool = _opt(
        default=True,
        doc="Offer peers the encrypted TCP data channel for chunks (faster than libp2p).",
    )
    data_port: int = _opt(
        0,
        "TCP port of the data channel on the first listen address; 0 picks a free one. "
        "Behind NAT, set it and forward the same port on the address in [network] announce. "
        "A fixed port that cannot be bound stops the daemon.",
    )


@dataclass(frozen=True)
class ComputeConfig:
    """[compute]: running peers' WebAssembly jobs on this machine (docs/compute.md)."""

    enabled: bool = _opt(
        default=False,
        doc="Offer this machine's spare compute to peers: start sandboxed worker processes "
        "and announce them in the DHT.",
    )
    slots: int = _opt(1, "Jobs run at once, one worker process (and one core) each.")
    max_fuel: int = _opt(
        10**12, "Most fuel (about one unit per WebAssembly instruction) one job may use."
    )
    max_memory: int = _opt(256 * 1024**2, "Most bytes of linear memory one job may use.")
    max_wall: int = _opt(300, "Most seconds one job may run.")
    max_output: int = _opt(64 * 1024**2, "Most bytes of stdout one job may write.")
    max_input: int = _opt(1024**3, "Most bytes of module, stdin and input files one job may bring.")
    max_load: float = _opt(
        0.0,
        "Take jobs only while the 1-minute load average per CPU is below this "
        "(e.g. 0.5 for an otherwise idle machine); 0 means always.",
    )
    jobs_per_minute: float = _opt(
        60.0, "Jobs accepted per minute from one peer, in bursts of up to a minute's worth."
    )
    output_keep_seconds: int = _opt(
        3600,
        "Seconds a job's stored output is kept for its requester to fetch; once fetched, "
        "or after this, gc and the store quota reclaim it.",
    )


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the optional Prometheus endpoint (docs/cli.md lists the metrics)."""

    listen: str = _opt(
        "",
        'IP:PORT to serve Prometheus metrics on at /metrics, e.g. "127.0.0.1:9464"; '
        "empty: no endpoint. The metrics carry no content IDs or peer IDs, but anyone who "
        "can reach the address sees this node's traffic: keep it on loopback unless a "
        "firewall limits who reaches it.",
    )


def _check_chunk_size(value: int) -> str | None:
    if value < 1 << 14 or value > 1 << 24 or value & (value - 1):
        return "is not a power of two from 16384 to 16777216"
    return None


def _check_non_negative(value: float) -> str | None:
    return "must not be negative" if value < 0 else None


def _check_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "is not a TCP port (0 to 65535)"


def _check_positive(value: float) -> str | None:
    return "must be greater than zero" if value <= 0 else None


PORT_MAPPING_METHODS = ("off", "auto", "natpmp", "upnp")


def _check_port_mapping(value: str) -> str | None:
    if value in PORT_MAPPING_METHODS:
        return None
    return 'is not one of "off", "auto", "natpmp" or "upnp"'


def _check_gateway(value: str) -> str | None:
    if not value:
        return None
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        return "is not an IPv4 address like 192.168.1.1 (NAT-PMP is IPv4 only)"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "is not a router's address; give the router's LAN address, like 192.168.1.1"
    return None


def _check_upnp_url(value: str) -> str | None:
    if not value:
        return None
    parsed = urllib.parse.urlsplit(value)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if parsed.scheme != "http" or not parsed.hostname:
        return "is not an http:// URL like http://192.168.1.1:5000/rootDesc.xml"
    return None


def _check_listen(value: str) -> str | None:
    try:
        parse_listen_addr(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_metrics_listen(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_peer_multiaddr(value: str) -> str | None:
    if value.startswith("/dnsaddr/"):
        return (
            "is a /dnsaddr/ address, which p2pshare does not resolve; list the "
            "/ip4|/dns4/HOST/tcp/PORT/p2p/PEER_ID addresses its TXT records name "
            "(docs/discovery.md, Joining the public Amino DHT)"
        )
    try:
        peer = parse_peer_addr(value)
    except ValueError as exc:
        return str(exc)
    if peer.relay is not None:
        return "is a relay circuit; list the relay's own address (the part before /p2p-circuit)"
    return None


def _between(low: int, high: int) -> typing.Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"is not between {low} and {high}"

    return check


_check_slots = _between(1, 256)
_check_fuel = _between(jobspec.MIN_FUEL, jobspec.MAX_FUEL)
_check_memory = _between(jobspec.MIN_MEMORY, jobspec.MAX_MEMORY)
_check_wall = _between(jobspec.MIN_WALL_SECONDS, jobspec.MAX_WALL_SECONDS)
_check_output = _between(0, jobspec.MAX_OUTPUT_BYTES)

# Lists that must not be empty: a daemon that listens nowhere is unreachable.
_NON_EMPTY = {("network", "listen")}

_VALIDATORS: dict[tuple[str, str], typing.Callable[[typing.Any], str | None]] = {
    ("network", "listen"): _check_listen,
    ("network", "announce"): _check_multiaddr,
    ("network", "bootstrap"): _check_peer_multiaddr,
    ("network", "connect_timeout"): _check_positive,
    ("network", "max_connections"): _check_positive,
    ("network", "streams_per_peer"): _check_positive,
    ("network", "dht_requests_per_second"): _check_positive,
    ("network", "reprovide_interval"): _check_positive,
    ("network", "refresh_interval"): _check_positive,
    ("network", "relays"): _check_peer_multiaddr,
    ("network", "relay_max_reservations"): _check_positive,
    ("network", "relay_max_circuits"): _check_positive,
    ("network", "relay_circuit_bytes"): _check_positive,
    ("network", "relay_circuit_seconds"): _check_positive,
    ("network", "port_mapping"): _check_port_mapping,
    ("network", "natpmp_gateway"): _check_gateway,
    ("network", "upnp_root_url"): _check_upnp_url,
    ("store", "chunk_size"): _check_chunk_size,
    ("store", "quota_bytes"): _check_non_negative,
    ("transfer", "upload_rate"): _check_non_negative,
    ("transfer", "data_port"): _check_port,
    ("compute", "slots"): _check_slots,
    ("compute", "max_fuel"): _check_fuel,
    ("compute", "max_memory"): _check_memory,
    ("compute", "max_wall"): _check_wall,
    ("compute", "max_output"): _check_output,
    ("compute", "max_input"): _check_non_negative,
    ("compute", "max_load"): _check_non_negative,
    ("compute", "jobs_per_minute"): _check_positive,
    ("compute", "output_keep_seconds"): _check_positive,
    ("metrics", "listen"): _check_metrics_listen,
}


@dataclass(frozen=True)
class Config:
    """The whole config.toml."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in fields(Config)
}


def _find_line(text: str, section: str, key: str | None) -> int | None:
    current = ""
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=") if key else None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
        elif key_re and current == section and key_re.match(line):
            return number
    return None


def _where(path: Path, text: str, section: str, key: str | None) -> str:
    line = _find_line(text, section, key)
    name = f"[{section}] {key}" if key else f"[{section}]"
    return f"{path}, line {line}, {name}" if line else f"{path}, {name}"


def _coerce(value: object, hint: object) -> object:
    """Return the value as the field's type, or raise TypeError with what was expected."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if hint is float:
        # TOML and msgpack both carry nan and inf; no option means anything by them.
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise TypeError("a finite number")
        raise TypeError("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError("a list of strings")
    raise AssertionError(f"unsupported config type {hint!r}")


def _load_section(path: Path, text: str, name: str, raw: object, cls: type[Any]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(path, text, name, None)}: must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"{_where(path, text, name, key)}: unknown key "
                f"(known keys: {', '.join(sorted(known))})"
            )
        try:
            coerced = _coerce(value, hints[key])
        except TypeError as exc:
            raise ConfigError(f"{_where(path, text, name, key)}: must be {exc}") from None
        if coerced == () and (name, key) in _NON_EMPTY:
            raise ConfigError(
                f"{_where(path, text, name, key)}: must list at least one address, "
                'e.g. ["/ip4/0.0.0.0/tcp/4001"]'
            )
        validator = _VALIDATORS.get((name, key))
        items = coerced if isinstance(coerced, tuple) else (coerced,)
        for item in items:
            problem = validator(item) if validator else None
            if problem:
                raise ConfigError(f"{_where(path, text, name, key)}: {item!r} {problem}")
        values[key] = coerced
    return cls(**values)


def _describe_toml_error(text: str, path: Path, message: str) -> str:
    match = _TOML_POS_RE.search(message)
    lines = text.splitlines()
    line = int(match.group(1)) if match and match.group(1) else len(lines) + 1
    where = f"{path}, line {line}"
    key = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", lines[line - 1]) if line <= len(lines) else None
    if key:
        where += f", key {key.group(1)}"
    return f"{where}: invalid TOML: {_TOML_POS_RE.sub('', message)}"


def check_changes(section: str, changes: dict[str, object]) -> dict[str, object]:
    """Check new values for options of ``section`` as config.toml's would be checked.

    Returns them with their config types; UserError names the first bad one.
    """
    cls = _SECTIONS.get(section)
    if cls is None:
        raise UserError(f"there is no [{section}] section")
    hints = typing.get_type_hints(cls)
    checked: dict[str, object] = {}
    for key, value in changes.items():
        if key not in hints:
            raise UserError(f"[{section}] has no option {key!r}")
        try:
            coerced = _coerce(value, hints[key])
        except TypeError as exc:
            raise UserError(f"[{section}] {key} must be {exc}") from None
        validator = _VALIDATORS.get((section, key))
        problem = validator(coerced) if validator else None
        if problem:
            raise UserError(f"[{section}] {key}: {coerced!r} {problem}")
        checked[key] = coerced
    return checked


def parse_config(text: str, path: Path) -> Config:
    """Parse config text; every problem is a ConfigError naming file, line and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_describe_toml_error(text, path, str(exc))) from None
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(
                f"{_where(path, text, name, None)}: unknown section "
                f"(known sections: {', '.join(sorted(_SECTIONS))})"
            )
        sections[name] = _load_section(path, text, name, value, cls)
    return Config(**sections)


def load_config(path: Path) -> Config:
    """Read config.toml; a missing file means all defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, path)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_config(config: Config) -> str:
    """A commented config.toml holding ``config``; every key is documented."""
    lines = [
        "# p2pshare node configuration. Every key is optional; the values below are",
        "# the defaults unless `p2pshare init` was given others.",
        "# Reference: docs/configuration.md",
    ]
    for section in fields(Config):
        cls = _SECTIONS[section.name]
        lines += ["", f"# {(cls.__doc__ or '').strip()}", f"[{section.name}]"]
        current = getattr(config, section.name)
        for opt in fields(cls):
            lines.append(f"# {opt.metadata['doc']}")
            lines.append(f"{opt.name} = {_toml_value(getattr(current, opt.name))}")
    return "\n".join(lines) + "\n"


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(section, key, default, doc) for every option, for the docs."""
    rows = []
    for section in fields(Config):
        cls = _SECTIONS[section.name]
        for opt in fields(cls):
            factory = opt.default_factory
            default = factory() if callable(factory) else opt.default
            rows.append((section.name, opt.name, _toml_value(default), opt.metadata["doc"]))
    return rows
