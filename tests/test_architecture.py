"""The shape of service/, read from its source with ast (nothing is imported): file and
function sizes, and import cycles among its modules.

Both checks are tables. What is over a limit or in a cycle today is listed, with the reason,
and nothing else may join it: a file that grows past the limit, a new long function or a new
cycle fails. The lists only shrink: an entry that no longer needs to be there fails too, so
that it is removed in the change that fixed it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICE = REPO / "service"

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

# Over a size limit today, with the reason; nothing is since issue 12 split cli.py, language.py
# and the classifier's training modules. A path ending in "/" covers a package. Remove an
# entry when its file fits; never add one.
OVERSIZED: dict[str, str] = {}

# Import cycles among service modules today (each a set of modules that reach each other).
# A new cycle, or a module joining one of these, fails; an entry is shrunk or removed in the
# change that breaks (part of) its cycle.
KNOWN_CYCLES: list[set[str]] = []


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _files() -> dict[str, Path]:
    return {_module(p): p for p in sorted(SERVICE.rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _allowed(path: Path) -> str | None:
    rel = _rel(path)
    return next((k for k in OVERSIZED if rel == k or (k.endswith("/") and rel.startswith(k))), None)


def _oversized(path: Path) -> list[str]:
    """What in this file is over a limit: the file itself, its long functions."""
    text = path.read_text(encoding="utf-8")
    found = []
    if text.count("\n") > MAX_FILE_LINES:
        found.append(f"{_rel(path)}: {text.count(chr(10))} lines")
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{_rel(path)}:{node.lineno}: {node.name}() is {length} lines")
    return found


def _imports(module: str, path: Path) -> set[str]:
    """The service modules this file imports, at the top or inside functions alike (an import
    moved into a function still makes the dependency)."""
    files = _files()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in files}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                name = f"{base}.{a.name}"
                if name in files:
                    found.add(name)  # a module: from service import pipeline
                elif base in files:
                    found.add(base)  # a name defined in the module (or its __init__)
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next((w for w in edges if w not in index or w in on_stack), None)
            if nxt is not None:
                if nxt in index:
                    low[node] = min(low[node], index[nxt])
                else:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "d"}, "f": {"d"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
    assert _cycles({"x": {"y"}, "y": set()}) == []


def test_imports_are_resolved_to_service_modules():
    files = _files()
    imports = _imports("service.backtest.runs", files["service.backtest.runs"])
    assert {"service.pipeline", "service.backtest.scoring", "service.policy"} <= imports
    assert not any(m.startswith(("collections", "typing")) for m in imports)


@pytest.mark.parametrize("path", sorted(_files().values()), ids=_rel)
def test_files_and_functions_fit(path: Path):
    found = _oversized(path)
    if _allowed(path) is None:
        assert not found, (
            f"over {MAX_FILE_LINES} lines a file or {MAX_FUNCTION_LINES} a function: {found}; "
            "split it by job (do not add it to OVERSIZED)"
        )


def test_oversized_entries_are_still_needed():
    for entry in sorted(OVERSIZED):
        paths = [p for p in _files().values() if _allowed(p) == entry]
        assert paths, f"{entry} is in OVERSIZED but no such file or package exists: remove it"
        assert any(_oversized(p) for p in paths), f"{entry} fits now: remove it from OVERSIZED"


def test_no_new_import_cycles():
    graph = {m: _imports(m, p) for m, p in _files().items()}
    cycles = _cycles(graph)
    new = [sorted(c) for c in cycles if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"new import cycles among service modules: {new}"
    stale = [sorted(k) for k in KNOWN_CYCLES if k not in cycles]
    now = [sorted(c) for c in cycles]
    assert not stale, f"KNOWN_CYCLES lists {stale}, the cycles are now {now}: update the list"
