"""Where things live: no module of the preflight package imports one that imports it back, the
agents sent to hosts stand alone, and the verdicts start no process."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scripts" / "preflight"
AGENTS = ("host_probe", "mesh_agent", "mpi_probe")
# What an agent may import besides the standard library (each guarded on the host).
AGENT_EXTRAS = {"psutil", "mpi4py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The modules of the package that `path` imports at module level (not inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()
    # A package's __init__ importing its own submodules is how a registry works: not a cycle
    # unless a submodule imports the package back by name.
    cycles = [c for m in edges if (c := cycle_from(m, edges))]
    assert not cycles, cycles[0]


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": set()}) is None


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
@pytest.mark.parametrize("agent", AGENTS)
def test_agents_import_the_standard_library_only(agent):
    tree = ast.parse((PACKAGE / "agents" / f"{agent}.py").read_text())
    top = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
           for alias in node.names}
    top |= {node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, f"{agent} imports from the package; it is sent alone as text"
    assert top - set(sys.stdlib_module_names) - AGENT_EXTRAS == set()


def test_verdicts_start_no_process():
    """checks/ judges; active/ and remote run. A verdict module importing subprocess or the
    runners would blur that line."""
    runners = {"subprocess", "preflight.proc.run", "preflight.remote", "preflight.active"}
    for path in (PACKAGE / "checks").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        found = imports(path) | names
        assert not {m for m in found if any(m.startswith(r) for r in runners)}, path.name
