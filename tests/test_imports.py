"""The import graph of the fctc package has no cycle.

Every ``import`` and ``from ... import`` in every module of ``fctc/`` (at module level and inside
functions alike, since a lazy import that closes a circle is still a circle; ``if TYPE_CHECKING:``
blocks excepted) is an edge from the importing module to the module it names: ``from .x import y``
names ``pkg.x``, or ``pkg.x.y`` when that is a module itself. Read with ``ast`` from the source, so
nothing is executed. Each module may import only lower-level ones (see the README's layout).
"""

from __future__ import annotations

import ast
from pathlib import Path

import fctc

PACKAGE = Path(fctc.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """``{module: the fctc modules it imports}`` for every module of the package."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = here[: len(here) - node.level + 1] if node.level else []
                if node.level and node.level > len(here):
                    raise AssertionError(f"{path}: relative import beyond the package")
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import fctc.tree.x` names fctc.tree
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    colour = {n: 0 for n in graph}  # 0 unseen, 1 on the path, 2 done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if colour[m] == 1:
                return path[path.index(m):] + [m]
            if colour[m] == 0:
                found = visit(m)
                if found:
                    return found
        path.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "fctc.tree" in graph["fctc.backend"]
    assert "fctc.optim.base" in graph["fctc.train.step"]
    assert "fctc.optim" in graph["fctc.cli.recipe"]


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
