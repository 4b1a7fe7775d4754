"""The package's layers: imports only point down, and no module imports itself back (no cycle).

Read from the source (every ``import`` a module makes, also under ``TYPE_CHECKING``), so a
newcomer's upward import fails here with the two modules named.
"""

from __future__ import annotations

import ast
import functools
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import claude_sessions

PACKAGE = Path(claude_sessions.__file__).resolve().parent
#: Bottom first; a module may import its own layer and the layers below it.
LAYERS = [
    {"errors", "config", "session_config", "content", "offline_model"},
    {"observability"},
    {"store"},
    {"gateway"},
    {"workers"},
    {"cluster"},
    {"sessions"},
    {"http"},
    {"cli", "demo"},
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("claude_sessions", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def imports_of(path: Path, name: str) -> set[str]:
    """The package's modules ``path`` imports (a ``from x import y`` names ``x.y`` when that is a module)."""
    known = modules()
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {each for each in found if each in known and each != name}


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_every_layer_has_a_room_and_every_room_a_layer() -> None:
    rooms = {room(name) for name in modules()} - {"__init__"}
    assert rooms == set(RANK)


@pytest.mark.parametrize("name", sorted(n for n in modules() if room(n) != "__init__"))
def test_imports_point_down(name: str) -> None:
    upward = [
        target
        for target in sorted(imports_of(modules()[name], name))
        if room(target) == "__init__" or RANK[room(target)] > RANK[room(name)]
    ]
    assert upward == [], f"{name} imports a higher layer"


def test_no_module_imports_itself_back() -> None:
    graph = {name: imports_of(path, name) for name, path in modules().items()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")
