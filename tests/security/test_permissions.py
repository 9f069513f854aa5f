"""Local other users: the node's home, key and control socket are private, and the
daemon refuses to start when they are not."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pytest

from p2pshare.errors import UserError
from p2pshare.identity import NodeKey
from p2pshare.launcher import init_home, run_cli

if TYPE_CHECKING:
    from p2pshare.home import Home

# Each bit a member of the group or anyone else could use to read, change or enter.
OPEN_BITS = [0o040, 0o020, 0o010, 0o004, 0o002, 0o001]


def test_init_creates_a_private_home(home: Home) -> None:
    result = run_cli(home, "init")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.config_path.stat().st_mode) == 0o600
    home.check_private()
    NodeKey.load(home.key_path)


def test_init_makes_an_existing_directory_private(home: Home) -> None:
    home.root.mkdir(mode=0o755)
    home.root.chmod(0o755)
    assert run_cli(home, "init").returncode == 0
    home.check_private()


@pytest.mark.parametrize("bit", OPEN_BITS)
def test_a_home_open_to_others_is_refused(home: Home, bit: int) -> None:
    init_home(home)
    home.root.chmod(0o700 | bit)
    with pytest.raises(UserError, match=f"fix it with: chmod 700 {home.root}$"):
        home.check_private()


@pytest.mark.parametrize("bit", [*OPEN_BITS, 0o070, 0o007])
def test_a_key_open_to_others_is_refused(home: Home, bit: int) -> None:
    init_home(home)
    home.key_path.chmod(0o600 | bit)
    with pytest.raises(UserError, match=f"fix it with: chmod 600 {home.key_path}$"):
        NodeKey.load(home.key_path)


def _daemon_refuses(home: Home, sentence: str) -> None:
    # A daemon that does start would outlive the timeout and fail the test.
    result = run_cli(home, "daemon", timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr == f"error: {sentence}\n"
    assert not home.socket_path.exists()


def test_daemon_refuses_a_home_readable_by_others(home: Home) -> None:
    init_home(home)
    home.root.chmod(0o755)
    _daemon_refuses(
        home,
        f"the node home {home.root} is open to other users (mode 755); "
        f"fix it with: chmod 700 {home.root}",
    )


def test_daemon_refuses_a_key_readable_by_others(home: Home) -> None:
    init_home(home)
    home.key_path.chmod(0o644)
    _daemon_refuses(
        home,
        f"node key {home.key_path} can be read or changed by other users (mode 644); "
        f"fix it with: chmod 600 {home.key_path}",
    )
