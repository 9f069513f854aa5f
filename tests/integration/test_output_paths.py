"""Where get, a private get, a resumed download and compute run may write, with real
daemons on 127.0.0.1: never inside the node's home; ``-o DIR/`` puts the content in DIR.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from p2pshare.control.client import ControlClient
from p2pshare.errors import ControlCallError, ExitCode
from p2pshare.launcher import DaemonProcess, run_cli, start_all
from p2pshare.store.catalog import Catalog, DownloadRequest
from p2pshare.store.lifecycle import DownloadState
from tests.adversarial.test_faults import small_filesystem
from tests.integration.cluster import bootstrapped, cli_json
from tests.transfer.test_outpath import bind_mount

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pshare.home import Home

pytestmark = pytest.mark.integration
MIB = 1 << 20
HOME_REFUSAL = "inside this node's home"


def contents(home: Home) -> dict[str, str]:
    """The home's files outside its logs, which the daemon appends to meanwhile."""
    seen = {}
    for dirpath, _dirs, files in os.walk(home.root):
        for name in files:
            path = os.path.join(dirpath, name)  # noqa: PTH118
            if name.startswith(("daemon.", "catalog.sqlite")) or name == "control.sock":
                continue
            with open(path, "rb") as f:  # noqa: PTH123
                seen[os.path.relpath(path, home.root)] = hashlib.sha256(f.read()).hexdigest()
    return seen


def refused(result: Any) -> str:
    assert result.returncode == ExitCode.FAILED, result.stdout
    assert result.stderr.count("\n") == 1, "one sentence, no traceback"
    return str(result.stderr)


@pytest.fixture
def nodes(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    """node0 bootstraps; node1 shares; node2 gets."""
    yield from bootstrapped(short_tmp, 3)


def test_get_never_writes_into_the_home_with_force_by_link_or_bind_mount(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    _boot, sharer, getter = nodes
    data = tmp_path / "report.pdf"
    data.write_bytes(os.urandom(MIB + 3))
    shared = cli_json(sharer.home, "share", str(data))
    home = getter.home
    before = contents(home)
    (tmp_path / "link").symlink_to(home.root)
    with bind_mount(home.root, tmp_path / "mnt") as mnt:
        for dest in (
            home.key_path,
            home.config_path,
            home.root / "content" / "x",
            tmp_path / "link" / "node.key",
            mnt / "node.key",
        ):
            result = run_cli(home, "get", shared["ticket"], "-o", str(dest), "--force")
            assert HOME_REFUSAL in refused(result), result.stderr
            assert "choose a path outside it, such as ~/Downloads/" in result.stderr
        # -o HOME/ (into the home) too.
        result = run_cli(home, "get", shared["ticket"], "-o", f"{home.root}/")
        assert HOME_REFUSAL in refused(result)
    assert contents(home) == before
    assert cli_json(home, "downloads")["downloads"] == []
    # The same get to the suggested kind of place works.
    out = tmp_path / "Downloads"
    out.mkdir()
    report = cli_json(home, "get", shared["ticket"], "-o", f"{out}/")
    assert report["destination"] == str(out / "report.pdf")
    assert (out / "report.pdf").read_bytes() == data.read_bytes()


def test_the_control_api_refuses_the_home_too(nodes: list[DaemonProcess], tmp_path: Path) -> None:
    """A client other than the CLI gets the same refusal from the daemon."""
    _boot, sharer, getter = nodes
    data = tmp_path / "f.bin"
    data.write_bytes(b"x" * 1000)
    shared = cli_json(sharer.home, "share", str(data))
    home = getter.home
    before = contents(home)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("get", {"ref": shared["ticket"], "dest": str(home.key_path), "force": True}),
        ("get", {"ref": shared["ticket"], "dest": f"{home.root}/content/", "force": True}),
        (
            "compute_run",
            {"module": str(data), "dest": str(home.catalog_path), "force": True},
        ),
        ("compute_run", {"module": str(data), "dest": f"{home.root}/", "force": True}),
    ]
    for method, params in calls:
        with ControlClient(home) as client, pytest.raises(ControlCallError) as error:
            client.call(method, params)
        assert HOME_REFUSAL in str(error.value), (method, params)
    assert contents(home) == before


def test_a_download_resumed_at_start_whose_destination_is_in_the_home_fails_and_writes_nothing(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    _boot, sharer, getter = nodes
    data = tmp_path / "f.bin"
    data.write_bytes(os.urandom(200_000))
    shared = cli_json(sharer.home, "share", str(data))
    home = getter.home
    getter.stop()
    # Saved by an older version, or by hand: replace the node key, with --force.
    catalog = Catalog(home.catalog_path)
    try:
        catalog.save_download_request(
            DownloadRequest(
                cid=shared["cid"],
                destination=str(home.key_path),
                sources=((sharer.info["peer_id"], tuple(sharer.info["addrs"])),),
                force=True,
                state=DownloadState.ACTIVE,
                error=None,
                created_at=1,
                updated_at=1,
            )
        )
    finally:
        catalog.close()
    key = home.key_path.read_bytes()
    with DaemonProcess(home) as again:
        start_all([again])
        deadline = time.monotonic() + 60
        while (listed := cli_json(home, "downloads")["downloads"])[0]["state"] != "failed":
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)
        assert HOME_REFUSAL in listed[0]["error"]
        assert home.key_path.read_bytes() == key
        assert not list(home.root.glob(".node.key*"))


def test_a_private_share_is_never_decrypted_into_the_home_and_dir_slash_names_it(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    _boot, sharer, recipient = nodes
    secret = tmp_path / "plans.txt"
    secret.write_bytes(b"meet at noon\n")
    shared = cli_json(sharer.home, "share", str(secret), "--to", recipient.info["peer_id"])
    home = recipient.home
    before = contents(home)
    for dest in (str(home.key_path), f"{home.root}/content/"):
        result = run_cli(home, "get", shared["ticket"], "-o", dest, "--force", timeout=120)
        assert HOME_REFUSAL in refused(result)
    after = contents(home)
    # The ciphertext may be fetched into the store, the node's own; nothing else changed.
    assert {k: v for k, v in after.items() if not k.startswith("content/")} == before
    out = tmp_path / "out"
    out.mkdir()
    report = cli_json(home, "get", shared["ticket"], "-o", f"{out}/", timeout=120)
    assert report["private"]
    assert report["destination"] == str(out / "plans.txt")
    assert (out / "plans.txt").read_bytes() == b"meet at noon\n"


def test_a_private_get_checks_free_space_before_fetching_anything(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    _boot, sharer, recipient = nodes
    secret = tmp_path / "big.bin"
    secret.write_bytes(os.urandom(3 * MIB))
    shared = cli_json(sharer.home, "share", str(secret), "--to", recipient.info["peer_id"])
    with small_filesystem(tmp_path / "small", 1) as small:
        result = run_cli(recipient.home, "get", shared["ticket"], "-o", str(small / "big.bin"))
        stderr = refused(result)
        assert stderr.startswith(f"error: not enough free space for {shared['cid']} in {small}")
        assert list(small.iterdir()) == []
    # Refused before a chunk was fetched: the store holds none of it.
    stored = list((recipient.home.root / "content").rglob("*"))
    assert [p for p in stored if p.is_file()] == []
    assert cli_json(recipient.home, "downloads")["downloads"] == []


def test_get_into_a_directory_with_a_slash_and_a_missing_one(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    _boot, sharer, getter = nodes
    tree = tmp_path / "photos"
    (tree / "2024").mkdir(parents=True)
    (tree / "2024" / "a.jpg").write_bytes(b"jpeg")
    shared = cli_json(sharer.home, "share", str(tree), "--name", "photos")
    missing = tmp_path / "nope"
    result = run_cli(getter.home, "get", shared["ticket"], "-o", f"{missing}/")
    assert refused(result) == (
        f"error: {missing}/ names a directory (it ends with a slash), and {missing} does not "
        f"exist; create it first (mkdir -p {missing}), or drop the slash to save the content "
        f"as {missing} itself\n"
    )
    assert not missing.exists()
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("mine")
    report = cli_json(getter.home, "get", shared["ticket"], "-o", f"{here}/")
    assert report["destination"] == str(here / "photos")
    assert (here / "photos" / "2024" / "a.jpg").read_bytes() == b"jpeg"
    assert sorted(p.name for p in here.iterdir()) == ["mine.txt", "photos"]
    # Without the slash an existing directory stays refused, --force or not.
    result = run_cli(getter.home, "get", shared["ticket"], "-o", str(here), "--force")
    assert "is an existing directory" in refused(result)
    # Again into the same directory: the earlier copy is a directory, never replaced.
    result = run_cli(getter.home, "get", shared["ticket"], "-o", f"{here}/", "--force")
    assert "is an existing directory" in refused(result)
    assert cli_json(getter.home, "downloads")["downloads"] == []
    # A directory shared without a name is named by its content ID.
    (tree / "b.jpg").write_bytes(b"b")
    nameless = cli_json(sharer.home, "share", str(tree))
    report = cli_json(getter.home, "get", nameless["ticket"], "-o", f"{here}/")
    assert report["destination"] == str(here / nameless["cid"])
    assert (here / nameless["cid"] / "b.jpg").read_bytes() == b"b"


def test_dir_slash_never_replaces_a_file_of_the_user_even_with_force(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    """The name in -o DIR/ comes from the publisher (or the module): an existing DIR/NAME
    is the user's, and the hint they follow first replaces nothing."""
    _boot, sharer, getter = nodes
    published = tmp_path / "pub"
    published.mkdir()
    (published / "notes.txt").write_bytes(b"the publisher's notes")
    public = cli_json(sharer.home, "share", str(published / "notes.txt"))
    private = cli_json(
        sharer.home, "share", str(published / "notes.txt"), "--to", getter.info["peer_id"]
    )
    here = tmp_path / "here"
    here.mkdir()
    mine = here / "notes.txt"
    mine.write_bytes(b"my own notes")
    for shared in (public, private):
        result = run_cli(
            getter.home, "get", shared["ticket"], "-o", f"{here}/", "--force", timeout=120
        )
        assert refused(result) == (
            f"error: {mine} already exists, and -o {here}/ never replaces anything (not even "
            f"with --force): save it under another name with -o {here}/NEW-NAME; to replace "
            f"{mine} itself, name it: -o {mine} --force\n"
        )
        assert mine.read_bytes() == b"my own notes"
    assert sorted(p.name for p in here.iterdir()) == ["notes.txt"]
    # A private share this node already holds is opened from its store: the same refusal.
    cli_json(getter.home, "get", private["ticket"], "-o", str(tmp_path / "read.txt"))
    result = run_cli(getter.home, "get", private["ticket"], "-o", f"{here}/", "--force")
    assert "never replaces anything" in refused(result)
    assert "use --force" not in result.stderr
    assert mine.read_bytes() == b"my own notes"
    module = tmp_path / "notes.wat"
    module.write_text("(module)")
    (here / "notes.out").write_bytes(b"my own output")
    with ControlClient(getter.home) as client, pytest.raises(ControlCallError) as error:
        client.call("compute_run", {"module": str(module), "dest": f"{here}/", "force": True})
    assert "never replaces anything" in str(error.value)
    assert (here / "notes.out").read_bytes() == b"my own output"
    # Naming the file is how it is replaced.
    cli_json(getter.home, "get", public["ticket"], "-o", str(mine), "--force")
    assert mine.read_bytes() == b"the publisher's notes"
