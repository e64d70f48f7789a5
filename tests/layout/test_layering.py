"""The package reads top-down: no import circle among deltaconvert's modules, and every
module imports only from floors below its own (docs/ARCHITECTURE.md, "Floors").

Every import counts: top level, inside functions and under ``TYPE_CHECKING``. Imports
inside one folder unit (``ops``, ``graph``, ``backends``, ``bench``) may point either way
but must not form a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import deltaconvert

ROOT = Path(deltaconvert.__file__).parent

# Bottom to top. A unit is a top-level module or a sub-package of deltaconvert; ""
# is the package's own __init__ (the public API).
FLOORS: list[set[str]] = [
    {"version", "errors", "files", "layers", "synthetic", "timing", "stream_order"},
    {"validation", "delta"},
    {"metrics", "ops"},
    {"graph", "backends", "stats"},
    {"cuda_graph", "handlers"},
    {"model"},
    {"thresholds", "video", "weights", "architectures", "heatmap", "frontends", "streams"},
    {"sources", "serving"},
    {"serialization", "convert", "tune", "sinks"},
    {"predict", "dense_tail"},
    {"", "testing", "serve"},
    {"bench"},
    {"cli"},
]
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """deltaconvert modules that module ``name`` (whose code is ``source``) imports;
    ``from pkg import sub`` counts as an import of ``pkg.sub``."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            stems = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            stem = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            subs = [f"{stem}.{alias.name}" for alias in node.names]
            stems = [s for s in subs if s in known]
            if len(stems) < len(subs):
                stems.append(stem)
        else:
            continue
        for target in stems:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imported_modules(path.read_text(), name, path.name == "__init__.py", set(files))
            for name, path in files.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_unit_has_a_floor():
    units = {unit(m) for m in import_graph()}
    assert units - set(FLOOR) == set(), "add new modules to FLOORS (and docs/ARCHITECTURE.md)"


def test_imports_go_down_the_floors():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if unit(a) != unit(b) and unit(a) in FLOOR and unit(b) in FLOOR
              and FLOOR[unit(b)] >= FLOOR[unit(a)]]
    assert upward == []


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_checker_sees_every_kind_of_import():
    """The checks above would pass vacuously if imports inside functions, under
    TYPE_CHECKING or of the package's own ``__init__`` were missed."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import X\n"
              "def f():\n    from . import cli\n    import deltaconvert.ops.base\n"
              "from . import __version__\n")
    known = {"deltaconvert", "deltaconvert.model", "deltaconvert.cli", "deltaconvert.ops",
             "deltaconvert.ops.base", "deltaconvert.probe"}
    assert imported_modules(source, "deltaconvert.probe", False, known) == {
        "deltaconvert.model", "deltaconvert.cli", "deltaconvert.ops.base", "deltaconvert"}
