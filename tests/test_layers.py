"""Imports only point down the layers of docs/architecture.md (and DESIGN.md).

Every import in p2pshare/ and cli/ is read with ast, including those under
TYPE_CHECKING and inside functions: a type-only import is still a dependency a
reader has to follow.  A module's *room* is its package under p2pshare (proto, net,
node, ...), a top-level module (identity, home, errors, ...) or cli.  A room may
import from rooms on lower floors only; rooms on one floor never import each other
(transfer and compute, store and net, ...).

``ONLY_IMPORTED_BY`` confines a library to the rooms that wrap it, and
``NEVER_IMPORTED_BY`` keeps libraries out of a room (proto is sans-IO).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top.  p2pshare (the package itself) only holds __version__.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "p2pshare"}),
    frozenset({"proto"}),
    frozenset({"identity", "home", "modes", "metrics"}),
    frozenset({"config", "control", "net", "store"}),
    frozenset({"compute", "transfer"}),
    frozenset({"node"}),
    frozenset({"launcher"}),
    frozenset({"demo"}),
    frozenset({"cli"}),
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}

ONLY_IMPORTED_BY: dict[str, frozenset[str]] = {
    "click": frozenset({"cli"}),
    # net/network.py is the edge: above it, peers and addresses are strings.
    "libp2p": frozenset({"net"}),
    "multiaddr": frozenset({"net"}),
    "prometheus_client": frozenset({"node"}),
    "sqlite3": frozenset({"store"}),
    "wasmtime": frozenset({"compute"}),
}
NEVER_IMPORTED_BY: dict[str, frozenset[str]] = {
    "proto": frozenset(
        {"libp2p", "logging", "multiaddr", "os", "pathlib", "random", "secrets", "socket"}
        | {"sqlite3", "threading", "time", "trio"}
    ),
}


def room_of(path: Path) -> str:
    """The room of a source file under ROOT."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "cli":
        return "cli"
    return "p2pshare" if parts[1:] == ("__init__",) else parts[1]


def _room_of_module(name: str) -> str | None:
    """The room of an imported module, or None for a library."""
    parts = name.split(".")
    if parts[0] == "p2pshare_cli":
        return "cli"
    if parts[0] != "p2pshare":
        return None
    return parts[1] if len(parts) > 1 else "p2pshare"


def _imported(tree: ast.AST, room: str) -> list[tuple[int, str]]:
    """(line, module) of every import; relative ones stay in their own room."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "p2pshare_cli" if room == "cli" else f"p2pshare.{room}"))
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def violations(path: Path, source: str) -> list[str]:
    """What in ``source`` (the text of ``path``) breaks the layering, one line each."""
    room = room_of(path)
    where = path.relative_to(ROOT)
    problems = []
    for line, module in _imported(ast.parse(source), room):
        target = _room_of_module(module)
        library = module.split(".")[0]
        if target is None:
            allowed = ONLY_IMPORTED_BY.get(library)
            if allowed is not None and room not in allowed:
                problems.append(f"{where}:{line}: {module} belongs to {', '.join(allowed)} only")
            if library in NEVER_IMPORTED_BY.get(room, frozenset()):
                problems.append(f"{where}:{line}: {room} never imports {module}")
        elif target != room and FLOOR[target] >= FLOOR[room]:
            problems.append(f"{where}:{line}: {room} imports {module}, which is not below it")
    return problems


def _sources() -> list[Path]:
    return sorted([*(ROOT / "p2pshare").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])


def test_every_room_has_a_floor() -> None:
    assert {room_of(path) for path in _sources()} <= FLOOR.keys()


def test_imports_only_point_down_the_layers() -> None:
    problems = [problem for path in _sources() for problem in violations(path, path.read_text())]
    assert problems == []


def test_the_check_sees_what_breaks_the_layering() -> None:
    proto = ROOT / "p2pshare" / "proto" / "example.py"
    assert violations(proto, "from p2pshare.identity import NodeKey\n") == [
        "p2pshare/proto/example.py:1: proto imports p2pshare.identity, which is not below it"
    ]
    assert violations(proto, "import trio\n") == [
        "p2pshare/proto/example.py:1: proto never imports trio"
    ]
    transfer = ROOT / "p2pshare" / "transfer" / "example.py"
    assert len(violations(transfer, "if TYPE_CHECKING:\n    import p2pshare.compute.pool\n")) == 1
    assert violations(transfer, "def f():\n    import wasmtime\n") == [
        "p2pshare/transfer/example.py:2: wasmtime belongs to compute only"
    ]
    assert violations(transfer, "from p2pshare.proto.chunks import BytesLike\n") == []
    node = ROOT / "p2pshare" / "node" / "example.py"
    assert violations(node, "if TYPE_CHECKING:\n    from libp2p.abc import IHost\n") == [
        "p2pshare/node/example.py:2: libp2p.abc belongs to net only"
    ]
    assert violations(node, "import multiaddr\n") == [
        "p2pshare/node/example.py:1: multiaddr belongs to net only"
    ]
