"""A shared tree arrives whole and with the modes its user expects (field test #14, #15).

Real daemons on 127.0.0.1; the getter's daemon runs with umask 077 (as a service
manager may start it) while the user's command runs with umask 002, so a mode that
came from the daemon's umask, or from the publisher's mode, shows.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.errors import ControlCallError
from p2pshare.home import Home
from p2pshare.launcher import DaemonProcess, cli_command, init_home, start_all

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration
DAEMON_UMASK = 0o077
USER_UMASK = 0o002
# Runs the daemon command with another umask than the test's.
WITH_DAEMON_UMASK = ("sh", "-c", f'umask {DAEMON_UMASK:03o} && exec "$@"', "sh")


@pytest.fixture
def pair(short_tmp: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """A seeder, and a getter whose daemon runs with umask 077."""
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    init_home(seeder_home)
    init_home(getter_home)
    with ExitStack() as stack:
        seeder = stack.enter_context(DaemonProcess(seeder_home))
        getter = stack.enter_context(DaemonProcess(getter_home, wrapper=WITH_DAEMON_UMASK))
        start_all([seeder, getter])
        yield seeder, getter


def cli_json(home: Home, *args: str, umask: int = USER_UMASK) -> Any:
    result = subprocess.run(
        cli_command(home, *args, "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=umask,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def make_tree(root: Path) -> Path:
    """Nested empty directories, a directory of a symlink only, and odd modes."""
    for rel in ("a/b/c", "empty", "only-link", "bin", "docs/old/older"):
        (root / rel).mkdir(parents=True)
    (root / "only-link" / "link").symlink_to(root / "bin")
    files = {
        "bin/run": 0o755,
        "bin/setuid": 0o4755,
        "docs/readme": 0o644,
        "docs/private": 0o600,
        "docs/world-writable": 0o666,
        "a/note": 0o640,
    }
    for rel, mode in files.items():
        (root / rel).write_bytes(rel.encode())
        (root / rel).chmod(mode)
    return root


def shape(root: Path) -> dict[str, tuple[str, bool, bytes]]:
    """Every directory and regular file under ``root``: kind, owner-exec bit, content."""
    found: dict[str, tuple[str, bool, bytes]] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", True, b"")
        elif stat.S_ISREG(st.st_mode):
            found[rel] = ("file", bool(st.st_mode & stat.S_IXUSR), path.read_bytes())
    return found


def modes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): stat.S_IMODE(path.lstat().st_mode)
        for path in [root, *root.rglob("*")]
    }


def test_shared_tree_arrives_with_empty_dirs_exec_bits_and_the_users_umask(
    pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    seeder, getter = pair
    source = make_tree(tmp_path / "src")
    shared = cli_json(seeder.home, "share", str(source))
    out = tmp_path / "out"
    cli_json(getter.home, "get", shared["ticket"], "-o", str(out))

    assert shape(out) == shape(source)
    directory, regular, executable = 0o775, 0o664, 0o775
    assert modes(out) == {
        ".": directory,
        "a": directory,
        "a/b": directory,
        "a/b/c": directory,
        "a/note": regular,
        "bin": directory,
        "bin/run": executable,
        "bin/setuid": executable,
        "docs": directory,
        "docs/old": directory,
        "docs/old/older": directory,
        "docs/private": regular,
        "docs/readme": regular,
        "docs/world-writable": regular,
        "empty": directory,
        "only-link": directory,
    }


def test_client_without_a_umask_gets_the_daemons(
    pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    seeder, getter = pair
    source = make_tree(tmp_path / "src")
    shared = cli_json(seeder.home, "share", str(source))
    out = tmp_path / "out"
    getter.call("get", {"ref": shared["ticket"], "dest": str(out)})
    found = modes(out)
    assert found["."] == found["empty"] == found["bin/run"] == 0o700
    assert found["docs/readme"] == 0o600


def test_client_without_a_umask_gets_the_umask_the_daemon_was_started_with(
    short_tmp: Path, tmp_path: Path
) -> None:
    """The daemon makes its own umask 077 at start; an older client's files must still
    get the umask the daemon was started with (022 here), not that private one."""
    seeder_home, getter_home = Home(short_tmp / "s"), Home(short_tmp / "g")
    init_home(seeder_home)
    init_home(getter_home)
    with ExitStack() as stack:
        seeder = stack.enter_context(DaemonProcess(seeder_home))
        getter = stack.enter_context(
            DaemonProcess(getter_home, wrapper=("sh", "-c", 'umask 022 && exec "$@"', "sh"))
        )
        start_all([seeder, getter])
        shared = cli_json(seeder.home, "share", str(make_tree(tmp_path / "src")))
        out = tmp_path / "out"
        getter.call("get", {"ref": shared["ticket"], "dest": str(out)})
    found = modes(out)
    assert found["."] == found["empty"] == found["bin/run"] == 0o755
    assert found["docs/readme"] == 0o644


def test_invalid_umask_is_refused_clearly(
    pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path
) -> None:
    seeder, getter = pair
    data = tmp_path / "f"
    data.write_bytes(b"x")
    shared = cli_json(seeder.home, "share", str(data))
    for umask in (-1, 0o1000, "022", True, 18.0):
        params = {"ref": shared["ticket"], "dest": str(tmp_path / "o"), "umask": umask}
        with pytest.raises(ControlCallError, match="parameter 'umask' must be an integer"):
            getter.call("get", params)
    assert not os.path.lexists(tmp_path / "o")
