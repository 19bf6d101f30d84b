"""The package's shape, checked mechanically: no class over the size limits (a class that grows
past them mixes concerns), and in the cache's own layers no ``except`` that catches everything
except at a background thread's top (a fault is named where it is expected; a bug surfaces)."""
from __future__ import annotations

import ast
import pathlib
from typing import Iterator, Tuple

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "peewee_kvcache"
MAX_LINES, MAX_METHODS = 250, 20
#: the layers whose faults go through core/faults.py
FAULT_LAYERS = ("cache", "invalidation", "levels", "l2")
#: a thread's top, where any exception must be logged and survived
THREAD_TOPS = {"invalidation/writer.py"}


def trees() -> Iterator[Tuple[pathlib.Path, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_no_class_over_the_size_limits():
    over = []
    for path, tree in trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                              for n in node.body)
                if lines > MAX_LINES or methods > MAX_METHODS:
                    over.append(f"{path.relative_to(PACKAGE)}:{node.name} {lines} lines, "
                                f"{methods} methods")
    assert not over, over


def swallows_everything(handler: ast.ExceptHandler) -> bool:
    """``except:``, ``except Exception`` or ``except BaseException`` not ending in ``raise``."""
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    reraises = isinstance(handler.body[-1], ast.Raise) and handler.body[-1].exc is None
    return not reraises and any(
        n is None or (isinstance(n, ast.Name) and n.id in ("Exception", "BaseException"))
        for n in names)


def test_faults_are_caught_by_name_in_the_cache_layers():
    broad = []
    for path, tree in trees():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] not in FAULT_LAYERS or relative in THREAD_TOPS:
            continue
        broad += [f"{relative}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.ExceptHandler) and swallows_everything(node)]
    assert not broad, broad
