"""The layer rule, checked on the source: imports point down only, and no two files import each other.

Layers, lowest first (README.md's layout section says the same):
0. ``compress.core``: the foundation; imports nothing else of the project.
1. ``pruning``; 2. ``export``; 3. ``quantization``; 4. ``benchmarks``: the algorithm packages; each may
   import the foundation and the algorithm packages listed before it, and knows nothing of run folders.
5. ``compress.pipeline`` (and ``compress.__main__``): CLI, run folders, stages, sidecars, service.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "pruning", "export", "quantization", "benchmarks")
RANKS = (("compress.core", 0), ("pruning", 1), ("export", 2), ("quantization", 3), ("benchmarks", 4),
         ("compress.pipeline", 5), ("compress.__main__", 5), ("compress", 0))


def rank(module: str) -> int:
    for prefix, r in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            return r
    raise AssertionError(f"{module}: not in any layer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        files += [p for p in (REPO / pkg).rglob("*.py") if not p.name.startswith("test_")]
    return sorted(files)


def imports_of(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def resolve(name: str, known: set[str]) -> str | None:
    """The project module a dotted import name refers to (``pkg.mod.Class`` -> ``pkg.mod``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = project_files()
    known = {module_name(p) for p in files}
    out = {}
    for path in files:
        me = module_name(path)
        out[me] = {m for n in imports_of(path) if (m := resolve(n, known)) and m != me}
    return out


def test_imports_point_down_only(graph):
    upward = [f"{a} (layer {rank(a)}) imports {b} (layer {rank(b)})"
              for a, deps in graph.items() for b in deps if rank(b) > rank(a)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles_between_files(graph):
    # parent packages' __init__ are not edges: importing pkg.mod runs pkg/__init__ but is not a dependency
    edges = {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_every_function_is_under_80_lines():
    long = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "\n".join(long)
