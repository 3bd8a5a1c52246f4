"""No import cycle in either package: module A importing B importing A, at any depth, counting
imports inside functions too (a deferred import hides a cycle, it does not remove it) and the
package `__init__` every import of a submodule runs first."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

from tests.support import REPO

ROOT = REPO
PACKAGES = (ROOT / "server" / "cronwire_server", ROOT / "client" / "cronwire")


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, modules: Collection[str] = ()) -> set[str]:
    """Every module the code imports, TYPE_CHECKING blocks aside. `from pkg import sub` of a
    submodule imports `sub`; of any other name, `pkg` itself."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for child in node.body for inner in ast.walk(child))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            names.update(submodules & set(modules))
            if not submodules <= set(modules):
                names.add(node.module)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = {_module_name(path, package): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        named = _imported(ast.parse(path.read_text()), modules)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parents = {".".join(n.split(".")[:k]) for n in named for k in range(1, n.count(".") + 1)}
        # A module's own packages are initialised before it runs: not an edge, unless it takes a
        # name from one of them (`from pkg import thing`), which that package may not have yet.
        implicit = {n for n in parents - named if not name.startswith(n + ".")}
        graph[name] = {n for n in named | implicit if n in modules and n != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_cycle(package: Path) -> None:
    assert cycles(import_graph(package)) == []


def test_the_check_sees_a_cycle_through_a_deferred_import() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    tree = ast.parse("def f():\n    from p.a import thing\n")
    assert "p.a" in _imported(tree)
