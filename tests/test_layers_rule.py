"""The package's layering (docs/architecture.md), checked by walking every import with ``ast``.

Each top-level unit of ``crdtool`` (a subpackage or a module) sits in one layer and may import only
units of its own layer or of layers below it; no two units, and no two modules, may import each
other in a circle. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "crdtool"

#: Top to bottom, as in docs/architecture.md. A unit not listed here fails the test: place it.
LAYERS: list[tuple[str, set[str]]] = [
    ("entry points", {"__main__", "cli", "commands", "progress"}),
    ("tools", {"distill", "bench", "deploy", "search", "profile"}),
    ("training", {"train"}),
    ("configuration", {"recipe", "runtime"}),
    ("domain", {"models", "losses", "data", "metrics", "weights"}),
    ("base", {"errors", "fileio", "tensorfiles", "versions", "__init__"}),
]
LAYER_OF = {unit: depth for depth, (_, units) in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """crdtool modules ``name`` imports (``from pkg import submodule`` resolves to the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t == "crdtool" or t.startswith("crdtool."))
    out.discard(name)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a package's own modules to its ``__init__`` (``from crdtool.data.x import`` runs
    ``crdtool/data/__init__`` first; that is Python's package mechanics, not a design dependency)."""
    return {m: {t for t in targets if not (m.startswith(t + "."))} for m, targets in graph.items()}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units - set(LAYER_OF) == set(), "place the new unit in LAYERS and in docs/architecture.md"


def test_no_import_goes_up_a_layer():
    upward = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                    if LAYER_OF.get(_unit(t), -1) < LAYER_OF.get(_unit(m), -1))
    assert upward == []


def test_no_import_circles_between_units():
    units: dict[str, set[str]] = defaultdict(set)
    for m, targets in _graph().items():
        units[_unit(m)].update(_unit(t) for t in targets if _unit(t) != _unit(m))
    assert _cycles(units) == []


def test_no_import_circles_between_modules():
    assert _cycles(_without_package_inits(_graph())) == []


#: The functions over ~80 lines and classes over ~250 that docs/architecture.md lists, with its reasons.
LONG: set[tuple[str, str]] = set()
FUNCTION_LINES, CLASS_LINES = 85, 255  # "~80" and "~250": a few lines of slack, not a second limit


def test_long_functions_and_classes_are_the_listed_ones():
    long = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            is_fn = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            limit = FUNCTION_LINES if is_fn else CLASS_LINES if isinstance(node, ast.ClassDef) else None
            if limit is not None and node.end_lineno - node.lineno > limit:
                long.add((path.relative_to(PACKAGE).as_posix(), node.name))
    assert long - LONG == set(), "split it, or list it with its reason in docs/architecture.md and in LONG"


def test_the_checker_sees_a_circle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LAYER_OF["commands"] < LAYER_OF["train"] < LAYER_OF["models"]  # commands above train above models
