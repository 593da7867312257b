"""The shape of service/, read from its source with ast (nothing is imported): file and
function sizes, import cycles among its modules, and its layers (no module imports from a
layer above its own).

The checks are tables. What is over a limit, in a cycle or importing upwards today is listed,
with the reason, and nothing else may join it: a file that grows past the limit, a new long
function, a new cycle or a new upward import fails. The lists only shrink: an entry that no
longer needs to be there fails too, so that it is removed in the change that fixed it.
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


# The layers of service/, lowest first, each with what it holds. A module imports from its own
# layer or a lower one, never from a higher one: the data path reads straight down, and
# serving code (up to the services) never reaches the classifier's training steps.
LAYERS = (
    ("core", "pure logic and leaf utilities, no Redis, no HTTP, no model: settings, schemas, "
             "YAML sources, logs, progress bars, the classification sums, language detection, "
             "the policy, the review rules, language-mix drift"),
    ("classifier", "the model at serving time: embedder, encoder and tuned layers, heads, "
                   "scorers, the embedding cache and the loader that builds them from Settings"),
    ("pipeline", "the one decide path: posts -> language, scores, the policy's outcome"),
    ("io", "Redis and HTTP behind small interfaces: queue, stores, telemetry, heartbeats, "
           "rate limits, API keys, the Python client"),
    ("services", "the running service: the worker and the API"),
    ("training", "the classifier's offline steps: build the encoder, read the datasets, train "
                 "and fine-tune, evaluate and write the card"),
    ("tools", "offline tools over the service and the model: backtest, replay, process "
              "management (which builds the model when it is missing)"),
    ("entry", "the CLI's commands and the entry points"),
)  # fmt: skip
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}

# Module -> layer. A key ending in "." is a package (itself and every module in it); the
# longest key that matches places a module. Every module must be placed.
LAYER_OF = {
    "service": "core",  # the package's own __init__
    "service.config": "core",
    "service.schemas": "core",
    "service.yamlsource": "core",
    "service.logs": "core",
    "service.progress": "core",
    "service.classification": "core",
    "service.language.": "core",
    "service.policy.": "core",
    "service.review": "core",
    "service.review.rules": "core",
    "service.langmix": "core",
    "service.langmix.drift": "core",
    "service.classifier.": "classifier",
    "service.classifier.build": "training",
    "service.classifier.card": "training",
    "service.classifier.datasets": "training",
    "service.classifier.evaluate": "training",
    "service.classifier.finetune": "training",
    "service.classifier.lexicon": "training",
    "service.classifier.readers": "training",
    "service.classifier.train": "training",
    "service.pipeline": "pipeline",
    "service.redisdb": "io",
    "service.queue": "io",
    "service.store": "io",
    "service.telemetry": "io",
    "service.heartbeat": "io",
    "service.ratelimit": "io",
    "service.auth": "io",
    "service.client": "io",
    "service.review.store": "io",
    "service.langmix.store": "io",
    "service.worker": "services",
    "service.api.": "services",
    "service.backtest.": "tools",
    "service.replay.": "tools",
    "service.processes": "tools",
    "service.commands.": "entry",
    "service.cli": "entry",
    "service.__main__": "entry",
}

# (importer, imported) pairs that import from a higher layer today, with the reason; nothing
# else may join them, and an entry is removed in the change that fixes it.
UPWARD_IMPORTS: dict[tuple[str, str], str] = {}


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


def _layer(module: str, table: dict[str, str]) -> str | None:
    keys = [
        k for k in table if module == k.rstrip(".") or (k.endswith(".") and module.startswith(k))
    ]
    return table[max(keys, key=len)] if keys else None


def _upward(graph: dict[str, set[str]], table: dict[str, str], rank: dict[str, int]) -> set:
    """(importer, imported) pairs where the imported module's layer is above the importer's."""
    return {
        (m, dep)
        for m, deps in graph.items()
        for dep in deps
        if rank[_layer(dep, table)] > rank[_layer(m, table)]
    }


def test_layer_check_on_a_known_table():
    table = {"s.low": "low", "s.pkg.": "high", "s.pkg.core": "low"}
    rank = {"low": 0, "high": 1}
    assert _layer("s.pkg", table) == "high" and _layer("s.pkg.core", table) == "low"
    assert _layer("s.pkg.x.y", table) == "high" and _layer("s.other", table) is None
    graph = {"s.low": {"s.pkg.core"}, "s.pkg.core": {"s.pkg.x"}, "s.pkg.x": {"s.low"}}
    assert _upward(graph, table, rank) == {("s.pkg.core", "s.pkg.x")}


def test_every_module_has_a_layer():
    modules = _files()
    unplaced = sorted(m for m in modules if _layer(m, LAYER_OF) is None)
    assert not unplaced, f"place these modules in LAYER_OF (the layer they belong to): {unplaced}"
    unknown = sorted({layer for layer in LAYER_OF.values() if layer not in RANK})
    assert not unknown, f"LAYER_OF names layers that LAYERS does not define: {unknown}"
    unused = sorted(k for k in LAYER_OF if not any(_layer(m, {k: ""}) is not None for m in modules))
    assert not unused, f"LAYER_OF names modules that do not exist: {unused}"


def test_no_module_imports_from_a_higher_layer():
    graph = {m: _imports(m, p) for m, p in _files().items()}
    upward = _upward(graph, LAYER_OF, RANK)
    new = sorted(
        f"{m} ({_layer(m, LAYER_OF)}) imports {dep} ({_layer(dep, LAYER_OF)})"
        for m, dep in upward - set(UPWARD_IMPORTS)
    )
    assert not new, f"imports from a higher layer: {new}; move the code, do not list it"
    stale = sorted(set(UPWARD_IMPORTS) - upward)
    assert not stale, f"UPWARD_IMPORTS lists {stale}, which no longer import upwards: remove them"
