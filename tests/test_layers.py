"""The package's layers, as the folder tree shows them, and its sizes (no module over 500 lines, no function over
60): every import (at module level or inside a function) points
down the order below or stays inside its own layer, and no modules import each other in a circle.

A deliberate exception goes into ALLOWED with a comment saying why; it is empty today.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarlab"

# Lowest first. A module may import from its own layer and from the layers before it, never from a later one.
LAYERS = (
    "base",  # errors, progress, cores, records, files and locks, figures: the leaves
    "models",  # the model factories and their registry
    "config",  # TrainConfig, recipes, their scaling to small data
    "data",  # datasets read into tensors, split, batched
    "runs",  # the run folder: file names, checkpoints, metrics, RunFolder
    "engine",  # training: device, optimiser, budget, tracking, the loop
    "results",  # analysis, comparison, report
    "tools",  # evaluate, predict, export, benchmark, study
    "sweep",  # many runs
    "serve",  # the web app over run and sweep folders
    "cli",  # every parser
    "api",  # the Python API
    "__init__",  # the package's index (reads the API lazily)
    "__main__",  # python -m cifarlab
)

# (importer, imported) pairs that may break the order, each with the reason. Keep it empty if you can.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((root.name, *parts))


def layer_of(module: str, root: Path) -> str:
    """The layer of ``cifarlab.<first part>...``: a subpackage's name, or a top-level module's."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    return parts[0]


def resolve(name: str, modules: set[str]) -> str | None:
    """The module an imported dotted name lives in: itself, or the nearest enclosing package or module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, module: str, modules: set[str], top: str) -> set[str]:
    """Every module of the package that ``path`` imports, wherever the import statement stands."""
    names: list[str] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this package, or level - 1 packages above it
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from x import y`: the module x.y if there is one, else x
                names.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    inside = (resolve(name, modules) for name in names if name == top or name.startswith(top + "."))
    return {target for target in inside if target is not None and target != module}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {m: imports_of(p, m, modules, root.name) for m, p in files.items()}


def layer_violations(graph: dict[str, set[str]], root: Path, allowed: dict[tuple[str, str], str]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module, root)
        for target in sorted(targets):
            there = layer_of(target, root)
            if target == root.name:  # the package's index, which every import passes through anyway
                there = "__init__"
            if rank[there] > rank[here] and (module, target) not in allowed:
                found.append(f"{module} ({here}) imports {target} ({there}), a later layer")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in import_graph(PACKAGE) if layer_of(m, PACKAGE) not in LAYERS)
    assert unknown == [], f"add their folder to LAYERS (in order) or move them into one: {unknown}"


def test_imports_point_down_the_layers():
    assert layer_violations(import_graph(PACKAGE), PACKAGE, ALLOWED) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_allow_list_holds_only_imports_that_exist():
    graph = import_graph(PACKAGE)
    assert [pair for pair in ALLOWED if pair[1] not in graph.get(pair[0], set())] == []


def test_the_checks_catch_an_upward_import_a_hidden_one_and_a_circle(tmp_path):
    root = tmp_path / "cifarlab"
    for folder in ("base", "engine", "results"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "base" / "errors.py").write_text("from cifarlab.engine import train\n")  # upward, at module level
    (root / "engine" / "train.py").write_text("def f():\n    from cifarlab.results.plots import draw\n")  # hidden
    (root / "engine" / "a.py").write_text("from cifarlab.engine import b\n")
    (root / "engine" / "b.py").write_text("from . import a\n")  # relative, closing a circle
    (root / "results" / "plots.py").write_text("import cifarlab.base.errors\n")  # downward: fine
    graph = import_graph(root)
    assert layer_violations(graph, root, {}) == [
        "cifarlab.base.errors (base) imports cifarlab.engine.train (engine), a later layer",
        "cifarlab.engine.train (engine) imports cifarlab.results.plots (results), a later layer",
    ]
    allowed = {("cifarlab.engine.train", "cifarlab.results.plots"): "a test of the allow-list"}
    assert len(layer_violations(graph, root, allowed)) == 1
    assert ["cifarlab.engine.a", "cifarlab.engine.b"] in cycles(graph)


LINES_PER_MODULE = 500
LINES_PER_FUNCTION = 60


def test_no_module_is_over_500_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > LINES_PER_MODULE} == {}


def test_no_function_is_over_60_lines():
    long = [
        f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}"
        for p in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (node.end_lineno or node.lineno) - node.lineno + 1 > LINES_PER_FUNCTION
    ]
    assert long == []
