"""The parts of the master import one way: no cycle in pmx/master/'s import graph.

Every import counts, including those inside functions (a lazy import that dodges a
circle is still a circle) and those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

MASTER = Path(__file__).resolve().parent.parent / "pmx" / "master"


def imports_of(path: Path) -> set[str]:
    """The pmx.master modules ``path`` imports, as module names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path.name}: relative import; pmx uses absolute ones")
        else:
            continue
        found.update(n for n in names if n.startswith("pmx.master."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {f"pmx.master.{p.stem}": p for p in MASTER.glob("*.py") if p.stem != "__init__"}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle as a list of modules (first == last), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from pmx.master.arbiter import Master\n")
    assert imports_of(lazy) == {"pmx.master.arbiter", "pmx.master.arbiter.Master"}


def test_the_master_imports_run_one_way():
    edges = graph()
    assert "pmx.master.arbiter" in edges and edges["pmx.master.supervise"]
    assert find_cycle(edges) == []


def test_no_part_imports_the_arbiter():
    importers = sorted(name for name, targets in graph().items()
                       if "pmx.master.arbiter" in targets and name != "pmx.master.__main__")
    assert importers == []
