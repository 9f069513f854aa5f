"""Where a node keeps its files, and the names of those files."""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from p2pshare.errors import ConfigError

HOME_ENV = "P2PSHARE_HOME"
HOME_MODE = 0o700
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Home:
    """A node's home directory: config, key, catalog, control socket and logs."""

    root: Path
    # Chosen by --home or $P2PSHARE_HOME: a command the CLI suggests must name it too,
    # or it would act on the default home instead.
    explicit: bool = field(default=False, compare=False)

    def command(self, *args: str) -> str:
        """The ``p2pshare`` command line to suggest for this home (``--home`` kept)."""
        words = ["p2pshare", *(["--home", str(self.root)] if self.explicit else []), *args]
        return shlex.join(words)

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
    def compute_dir(self) -> Path:
        """Scratch space of compute jobs (emptied at every start) and built modules."""
        return self.root / "compute"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def exists(self) -> bool:
        return self.key_path.exists()

    def create(self) -> None:
        """Create the directory, private to this user."""
        self.root.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        self.root.chmod(HOME_MODE)

    def check_private(self) -> None:
        """Refuse a home that another user owns or may enter, read or write.

        The home holds the node key and the control socket, which gives full control
        of the node; a directory open to others would let them swap the key or the
        config, or read the catalog, whatever the modes of the files inside.
        """
        info = self.root.stat()
        if info.st_uid != os.getuid():
            raise ConfigError(
                f"the node home {self.root} belongs to another user; "
                "choose a home of your own with --home"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the node home {self.root} is open to other users (mode {mode:o}); "
                f"fix it with: chmod 700 {self.root}"
            )
        self._check_config_private()

    def _check_config_private(self) -> None:
        """Refuse a config.toml that group or others may read or write, as node.key is.

        Whoever can change it picks the node's bootstrap peers, listen addresses and
        compute offer; docs/configuration.md promises mode 0600.
        """
        try:
            info = self.config_path.lstat()
        except FileNotFoundError:
            return
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the config {self.config_path} can be read or changed by other users "
                f"(mode {mode:o}); fix it with: chmod 600 {self.config_path}"
            )


def default_home_root() -> Path:
    """The platform's per-user data directory (e.g. ~/.local/share/p2pshare)."""
    from platformdirs import user_data_path  # noqa: PLC0415 - only needed without --home

    return user_data_path("p2pshare", appauthor=False)


def resolve_home(option: str | os.PathLike[str] | None) -> Home:
    """``--home`` wins over ``$P2PSHARE_HOME``, which wins over the platform default."""
    if option:
        return Home(Path(option).expanduser().absolute(), explicit=True)
    env = os.environ.get(HOME_ENV)
    if env:
        return Home(Path(env).expanduser().absolute(), explicit=True)
    return Home(default_home_root())
