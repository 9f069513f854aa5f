"""Where a node keeps its files, and the names of those files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "P2PSHARE_HOME"
HOME_MODE = 0o700
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Home:
    """A node's home directory: config, key, catalog, control socket and logs."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def key_path(self) -> Path:
        return self.root / "node.key"

    @property
    def socket_path(self) -> Path:
        return self.root / "control.sock"

    @property
    def lock_path(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def content_dir(self) -> Path:
        return self.root / "content"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def exists(self) -> bool:
        return self.key_path.exists()

    def create(self) -> None:
        """Create the directory, private to this user."""
        self.root.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        self.root.chmod(HOME_MODE)


def default_home_root() -> Path:
    """The platform's per-user data directory (e.g. ~/.local/share/p2pshare)."""
    from platformdirs import user_data_path  # noqa: PLC0415 - only needed without --home

    return user_data_path("p2pshare", appauthor=False)


def resolve_home(option: str | os.PathLike[str] | None) -> Home:
    """``--home`` wins over ``$P2PSHARE_HOME``, which wins over the platform default."""
    if option:
        return Home(Path(option).expanduser().absolute())
    env = os.environ.get(HOME_ENV)
    if env:
        return Home(Path(env).expanduser().absolute())
    return Home(default_home_root())
