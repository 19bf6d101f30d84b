"""The package's layers depend one way: each subpackage imports only itself and the layers below.

Top to bottom: the command line; the Peewee integration; the query-cache facade; invalidation
(outbox, sweeper, background writer); the levels (process memory, L1); the L2 gateway (breaker,
key layout); the test KV server; the KV backends; the shared vocabulary (names, codec, expiry,
stats, fork hooks); SQL analysis. Every import of the package's own modules is read from the
source (including imports inside functions and ``TYPE_CHECKING`` blocks), so a new upward import
fails here instead of growing a cycle.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, List, Tuple

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "peewee_kvcache"
LAYERS = ["cli", "orm", "cache", "invalidation", "levels", "l2", "testing", "kv", "core", "sql"]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def modules() -> Iterator[Tuple[str, pathlib.Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(parts), path


def imported(module: str, path: pathlib.Path) -> Iterator[Tuple[str, int]]:
    """Dotted names (relative to the package) of the package's modules ``module`` imports."""
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [alias.name for alias in node.names]
                yield from ((".".join(target + [name]), node.lineno) for name in names)
                yield ".".join(target), node.lineno
            elif node.module and node.module.startswith("peewee_kvcache"):
                yield node.module[len("peewee_kvcache."):], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("peewee_kvcache."):
                    yield alias.name[len("peewee_kvcache."):], node.lineno


def layer(dotted: str) -> str:
    return dotted.split(".")[0]


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS)


def test_imports_point_down_only():
    upward: List[str] = []
    for module, path in modules():
        own = layer(module)
        if own not in RANK:  # the top level (__init__, __main__) may import anything
            continue
        for target, line in imported(module, path):
            other = layer(target)
            if other in RANK and RANK[other] < RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph: Dict[str, set] = {module: set() for module, _ in modules()}
    for module, path in modules():
        graph[module] |= {t for t, _ in imported(module, path) if t in graph and t != module}
    state: Dict[str, int] = {}

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and not module.endswith("__init__"):
            visit(module, [])
