"""Creating a node's home: the directory, a documented config.toml and the key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from p2pshare.config import load_config, parse_config, render_config
from p2pshare.errors import UserError
from p2pshare.identity import NodeKey

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from p2pshare.home import Home


@dataclass(frozen=True)
class InitResult:
    peer_id: str
    created_config: bool


def initialise(
    home: Home,
    *,
    force: bool = False,
    listen: Sequence[str] = (),
    network: Mapping[str, Any] | None = None,
    compute: Mapping[str, Any] | None = None,
) -> InitResult:
    """Create the home, its config (unless present) and a fresh node key.

    An existing key is the node's identity: replacing it needs ``force``.
    ``listen``, ``network`` (other [network] keys) and ``compute`` ([compute] keys)
    are written into config.toml.
    """
    if home.key_path.exists() and not force:
        existing = NodeKey.load(home.key_path)
        raise UserError(
            f"{home.root} already holds node {existing.peer_id}; "
            "use --force to replace its key (this changes the node's identity)"
        )
    home.create()
    created_config = not home.config_path.exists()
    overrides = dict(network or {})
    if listen:
        overrides["listen"] = tuple(listen)
    if created_config or overrides or compute:
        config = load_config(home.config_path)
        config = replace(
            config,
            network=replace(config.network, **overrides),
            compute=replace(config.compute, **(compute or {})),
        )
        text = render_config(config)
        parse_config(text, home.config_path)
        _write_private(home.config_path, text)
    key = NodeKey.generate()
    key.save(home.key_path)
    return InitResult(key.peer_id, created_config)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
