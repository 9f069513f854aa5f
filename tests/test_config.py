from __future__ import annotations

import math
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.config import (
    _SECTIONS,
    _VALIDATORS,
    Config,
    check_changes,
    load_config,
    parse_config,
    reference_rows,
    render_config,
)
from p2pshare.errors import ConfigError, UserError
from p2pshare.proto.listen import is_loopback, parse_host_port

PATH = Path("/home/u/.p2pshare/config.toml")


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "config.toml") == Config()


def test_rendered_template_parses_back_to_the_same_config() -> None:
    config = Config()
    assert parse_config(render_config(config), PATH) == config


def test_a_new_node_joins_no_public_network_by_default() -> None:
    """p2pshare speaks the public Amino DHT's protocol (/ipfs/kad/1.0.0): only an empty
    bootstrap list (no built-in public one), no mDNS and no relays keep a new node to
    the peers its user names (docs/discovery.md, "Joining the public Amino DHT")."""
    for config in (Config(), parse_config(render_config(Config()), PATH)):
        network = config.network
        assert (network.bootstrap, network.relays, network.mdns) == ((), (), False)
        assert network.relay_service is False


def test_every_option_is_documented_in_the_template() -> None:
    text = render_config(Config())
    for section, key, _default, doc in reference_rows():
        assert f"[{section}]" in text
        assert f"\n{key} = " in text
        assert doc in text


def test_values_are_read() -> None:
    config = parse_config('[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n', PATH)
    assert config.network.listen == ("/ip4/127.0.0.1/tcp/0",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[network]\nlisten = 5\n", f"{PATH}, line 2, [network] listen: must be a list of strings"),
        ("[network]\n\nlistn = []\n", f"{PATH}, line 3, [network] listn: unknown key"),
        ("[netwrk]\n", f"{PATH}, line 1, [netwrk]: unknown section"),
        (
            '[network]\nlisten = ["tcp:4001"]\n',
            f"{PATH}, line 2, [network] listen: 'tcp:4001' is not a multiaddr",
        ),
        (
            "[network]\nlisten = []\n",
            f"{PATH}, line 2, [network] listen: must list at least one address",
        ),
        (
            '[network]\nlisten = ["/ip4/127.0.0.1/udp/4001/quic-v1"]\n',
            f"{PATH}, line 2, [network] listen: '/ip4/127.0.0.1/udp/4001/quic-v1' uses transport",
        ),
        ("[network]\nlisten = [\n", f"{PATH}, line 3"),
        ("[network]\nlisten = nope\n", f"{PATH}, line 2, key listen: invalid TOML"),
        ("network = 3\n", f"{PATH}, [network]: must be a table"),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


BOOT_ID = "QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ"
NODE_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        (f"/dnsaddr/bootstrap.libp2p.io/p2p/{BOOT_ID}", "which p2pshare does not resolve"),
        (f"/ip4/104.131.131.82/udp/4001/quic-v1/p2p/{BOOT_ID}", "p2pshare dials TCP only"),
        ("/ip4/104.131.131.82/tcp/4001", "does not end in /p2p/<peer ID>"),
        ("/ip4/104.131.131.82/tcp/4001/p2p/nope", "is not a peer ID"),
        (f"/ip4/0.0.0.0/tcp/4001/p2p/{BOOT_ID}", "unspecified address 0.0.0.0"),
        (
            f"/ip4/104.131.131.82/tcp/4001/p2p/{BOOT_ID}/p2p-circuit/p2p/{NODE_ID}",
            "is a relay circuit; list the relay's own address",
        ),
    ],
)
def test_a_bootstrap_address_p2pshare_cannot_dial_is_refused_with_the_reason(
    address: str, says: str
) -> None:
    """Amino's published bootstrap list mixes /dnsaddr/, QUIC and TCP entries: each
    refusal must say what is wrong, not that a valid multiaddr is not one."""
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_config(f'[network]\nbootstrap = ["{address}"]\n', PATH)
    tcp = f"/ip4/104.131.131.82/tcp/4001/p2p/{BOOT_ID}"
    assert parse_config(f'[network]\nbootstrap = ["{tcp}"]\n', PATH).network.bootstrap == (tcp,)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_reference_doc_lists_every_option() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for section, key, default, meaning in reference_rows():
        assert f"| `{section}` | `{key}` | `{default}` | {meaning} |" in doc


_FLOAT_KEYS = [
    (section, key)
    for section, cls in _SECTIONS.items()
    for key, hint in typing.get_type_hints(cls).items()
    if hint is float
]


@given(
    option=st.sampled_from(_FLOAT_KEYS),
    value=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 0.0]),
)
def test_float_options_refuse_nan_infinity_and_out_of_range(
    option: tuple[str, str], value: float
) -> None:
    section, key = option
    validator = _VALIDATORS.get(option)
    in_range = math.isfinite(value) and (validator is None or validator(value) is None)
    if in_range:
        assert check_changes(section, {key: value}) == {key: value}
    else:
        with pytest.raises(UserError, match=f"^\\[{section}\\] {key}[^\n]*$"):
            check_changes(section, {key: value})
    text = f"[{section}]\n{key} = {_toml_float(value)}\n"
    if in_range:
        assert getattr(getattr(parse_config(text, PATH), section), key) == value
    else:
        with pytest.raises(ConfigError, match=f"line 2, \\[{section}\\] {key}"):
            parse_config(text, PATH)


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def test_compute_rates_refuse_nan_and_infinity_over_the_control_socket() -> None:
    for key, value in [("max_load", math.nan), ("jobs_per_minute", math.inf)]:
        with pytest.raises(UserError, match="must be a finite number"):
            check_changes("compute", {key: value})
    with pytest.raises(UserError, match="must not be negative"):
        check_changes("compute", {"max_load": -0.5})


def test_metrics_endpoint_is_off_by_default() -> None:
    assert Config().metrics.listen == ""


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("[::1]:9464", "::1", 9464),
        ("0.0.0.0:80", "0.0.0.0", 80),
    ],
)
def test_metrics_listen_takes_an_ip_and_fixed_port(text: str, host: str, port: int) -> None:
    config = parse_config(f'[metrics]\nlisten = "{text}"\n', PATH)
    addr = parse_host_port(config.metrics.listen)
    assert (addr.host, addr.port) == (host, port)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9464", "not an address like 127.0.0.1:9464"),
        ("localhost:9464", "not an IP address"),
        ("::1:9464", "without brackets"),
        ("127.0.0.1:0", "port from 1 to 65535"),
        ("127.0.0.1:99999", "port from 1 to 65535"),
        ("127.0.0.1:http", "port from 1 to 65535"),
    ],
)
def test_a_bad_metrics_listen_address_names_the_key_and_the_problem(
    text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=r"line 2, \[metrics\] listen: .*" + problem):
        parse_config(f'[metrics]\nlisten = "{text}"\n', PATH)


def test_only_loopback_metrics_addresses_count_as_private() -> None:
    assert is_loopback(parse_host_port("127.0.0.1:9464"))
    assert is_loopback(parse_host_port("[::1]:9464"))
    assert not is_loopback(parse_host_port("0.0.0.0:9464"))


def test_port_mapping_is_off_by_default_and_takes_the_documented_methods() -> None:
    assert Config().network.port_mapping == "off"
    for method in ("off", "auto", "natpmp", "upnp"):
        text = f'[network]\nport_mapping = "{method}"\n'
        assert parse_config(text, PATH).network.port_mapping == method


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('port_mapping = "pcp"', 'is not one of "off", "auto", "natpmp" or "upnp"'),
        ("port_mapping = true", "must be a string"),
        ('natpmp_gateway = "fe80::1"', "is not an IPv4 address"),
        ('natpmp_gateway = "router.local"', "is not an IPv4 address"),
        ('upnp_root_url = "192.168.1.1:5000"', "is not an http:// URL"),
        ('upnp_root_url = "https://192.168.1.1/x.xml"', "is not an http:// URL"),
        ('upnp_root_url = "http://192.168.1.1:abc/x.xml"', "port that is not a number"),
        ('upnp_root_url = "http://192.168.1.1:70000/x.xml"', "port that is not a number"),
        ('natpmp_gateway = "0.0.0.0"', "is not a router's address"),
        ('natpmp_gateway = "255.255.255.255"', "is not a router's address"),
        ('natpmp_gateway = "224.0.0.1"', "is not a router's address"),
    ],
)
def test_bad_port_mapping_settings_name_the_line_and_what_is_wanted(line: str, says: str) -> None:
    key = line.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=rf"line 2, \[network\] {key}: .*{re.escape(says)}"):
        parse_config(f"[network]\n{line}\n", PATH)


def test_port_mapping_gateway_and_url_are_accepted() -> None:
    network = parse_config(
        '[network]\nnatpmp_gateway = "192.168.1.1"\n'
        'upnp_root_url = "http://192.168.1.1:5000/rootDesc.xml"\n',
        PATH,
    ).network
    assert network.natpmp_gateway == "192.168.1.1"
    assert network.upnp_root_url == "http://192.168.1.1:5000/rootDesc.xml"
