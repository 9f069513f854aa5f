"""Creating a node's home: the directory, a documented config.toml and the key."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from p2pshare.config import load_config, parse_config, render_config
from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.node.lock import HomeLock
from p2pshare.transfer.destination import rename_noreplace

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from p2pshare.home import Home


@dataclass(frozen=True)
class InitResult:
    peer_id: str
    created_config: bool
    # Where ``--force`` put the key it replaced; None when there was none.
    replaced_key: Path | None = None


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
            f"{home.root} already holds node {existing.peer_id}, ready to use: start it "
            f"with: {home.command('daemon')}. To give it a new identity instead, "
            f"{home.command('init', '--force')} keeps the current key beside it"
        )
    home.create()
    # Held until the new key is in place: no daemon starts with the old key meanwhile,
    # and none running keeps using a key this replaces.
    lock = HomeLock(home.lock_path, home.command("stop"))
    lock.acquire()
    try:
        created_config = _write_config(home, listen, network, compute)
        # Only once nothing else can fail: a refused config leaves the key where it was.
        replaced = _keep_aside(home.key_path) if home.key_path.exists() else None
        key = NodeKey.generate()
        key.save(home.key_path)
    finally:
        lock.release()
    return InitResult(key.peer_id, created_config, replaced)


def _write_config(
    home: Home,
    listen: Sequence[str],
    network: Mapping[str, Any] | None,
    compute: Mapping[str, Any] | None,
) -> bool:
    """Write config.toml if it is missing or options change it; whether it was created."""
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
    return created_config


def _keep_aside(key_path: Path) -> Path:
    """Rename the node key to a name of its own, never over another file: an identity
    replaced by ``init --force`` can be put back."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(100):
        aside = key_path.with_name(f"{key_path.name}.replaced-{stamp}" + (f"-{n}" if n else ""))
        try:
            rename_noreplace(key_path, aside)
        except FileExistsError:
            continue
        return aside
    raise UserError(f"cannot keep the node key aside in {key_path.parent}: too many old keys")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
