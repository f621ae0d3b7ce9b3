"""The package's import graph: no module imports one that imports it back.

The graph is read from the source with ``ast`` (nothing is imported): every
``import kernelkeeper.x``, ``from kernelkeeper.x import ...``, ``from .x import
...`` and ``from . import x`` in ``src/kernelkeeper/*.py``, including those under
``if TYPE_CHECKING:`` (a cycle there is still a cycle in the design). A name
imported from the package itself (``from . import name`` that is not a module)
is an edge to ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "kernelkeeper"
MODULES = {p.stem for p in PACKAGE.glob("*.py")}


def _target(parts: list[str]) -> str:
    return parts[0] if parts and parts[0] in MODULES else "__init__"


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports (itself excluded)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kernelkeeper" or alias.name.startswith("kernelkeeper."):
                    out.add(_target(alias.name.split(".")[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                if module != "kernelkeeper" and not module.startswith("kernelkeeper."):
                    continue
                parts = module.split(".")[1:]
            elif node.level == 1:
                parts = node.module.split(".") if node.module else []
            else:
                continue  # above the package
            if parts:
                out.add(_target(parts))
            else:  # from kernelkeeper import a, b / from . import a, b
                out.update(_target([alias.name]) for alias in node.names)
    out.discard(path.stem)
    return out


def import_graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in sorted(PACKAGE.glob("*.py"))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, g) for g in groups]


def _one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    paths = [[start]]
    while paths:  # breadth first: the shortest way back to start
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return [*path, start]
            if w not in path:
                paths.append([*path, w])
    raise AssertionError("a strongly connected group has a cycle")  # pragma: no cover


def test_the_parser_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a known graph with a cycle.
    src = tmp_path / "fake.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import kernelkeeper.session\n"
        "from kernelkeeper.errors import KernelError\n"
        "from kernelkeeper import states, KernelState\n"
        "from . import connection as _c\n"
        "from .channels import Channel\n"
        "if TYPE_CHECKING:\n"
        "    from .manager import AsyncKernelManager\n"
    )
    assert imports_of(src) == {
        "session",
        "errors",
        "states",
        "__init__",
        "connection",
        "channels",
        "manager",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lifecycle_layer_is_in_no_cycle() -> None:
    graph = import_graph()
    assert {"supervisor", "policy", "manager"} <= set(graph)
    assert "restarter" not in graph  # replaced by supervisor + policy (it imported manager)
    # manager -> supervisor -> policy, and nothing below imports back up.
    assert "supervisor" in graph["manager"]
    assert "policy" in graph["supervisor"]
    assert not {"manager", "supervisor"} & graph["policy"]
    assert "manager" not in graph["supervisor"]
    lifecycle = {"manager", "supervisor", "policy", "events", "states", "callbacks", "procview"}
    bad = [c for c in cycles(graph) if lifecycle & set(c)]
    assert bad == []


def test_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []
