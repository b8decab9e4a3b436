"""The layers of DESIGN.md, checked on the source: imports only go downward, and no module imports itself round a cycle.

    core < backend (backend.py, engine/, comfyui/) < worker.py < model/ < ui/ < app/, cli/

Every import counts, at module level and inside functions (a lazy import is still a dependency), and
`importlib.import_module("desktop_app....")` with a literal name too. Imports under `if TYPE_CHECKING:` count for the
layer rules (a type from above is still knowledge of what is above) but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "desktop_app"

LAYERS = ["core", "backend", "worker", "model", "ui", "top"]

# Third-party packages a layer must not import: (top-level package, why)
QT = ("PySide6", "shiboken6", "qasync")
TORCH = ("torch", "diffusers", "transformers", "accelerate", "peft", "torchvision")
FORBIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "core": (QT + TORCH, "core is plain data and storage: no Qt, no torch"),
    "engine": (QT, "the engine has no Qt (tests and the CLI drive it directly)"),
    "comfyui": (QT + TORCH, "the remote backend has no Qt and no torch"),
    "backend.py": (QT + TORCH, "the Backend protocol is plain Python"),
    "model": (("PySide6.QtWidgets",) + TORCH, "model/ holds state in QObjects: no widgets, no torch"),
    "ui": (TORCH, "ui/ is widgets only: torch and diffusers stay behind the worker"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def area(module: str) -> str:
    """The part of the package a module belongs to: core, engine, comfyui, backend.py, worker, model, ui, app, cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] == "backend":
        return "backend.py"
    return parts[1]


def layer(module: str) -> str:
    return {
        "root": "core",  # desktop_app/__init__.py: the version, importable by everyone
        "core": "core",
        "resources": "core",
        "backend.py": "backend",
        "engine": "backend",
        "comfyui": "backend",
        "worker": "worker",
        "routing": "backend",  # desktop_app/routing.py: local engine or ComfyUI servers, by model
        "model": "model",
        "ui": "ui",
        "app": "top",
        "cli": "top",
        "__main__": "top",
    }.get(area(module), "unknown")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # what it imports: a desktop_app module, or a third-party dotted name
    path: Path
    line: int
    type_checking: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The desktop_app module a dotted name lives in: the longest prefix that is a module or package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST, type_checking: bool) -> None:
        if target.split(".")[0] == "desktop_app":
            target = _resolve(target)
        found.append(Import(module, target, path, getattr(node, "lineno", 0), type_checking))

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, type_checking)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg
                full = f"{prefix}.{alias.name}"
                add(full if full in MODULES else prefix, node, type_checking)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                value = node.args[0].value
                if isinstance(value, str) and not value.startswith("."):
                    add(value, node, type_checking)
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return found


ALL_IMPORTS: list[Import] = [imp for module, path in MODULES.items() for imp in imports_of(module, path)]


def _upward(imp: Import) -> str | None:
    if imp.target not in MODULES or imp.target == imp.source:
        return None
    src, dst = layer(imp.source), layer(imp.target)
    if "unknown" in (src, dst):
        return f"{imp.source if src == 'unknown' else imp.target} is in no layer of DESIGN.md"
    if LAYERS.index(dst) > LAYERS.index(src):
        return f"{src} must not import {dst} ({imp.source} -> {imp.target}): imports only go downward"
    pair = {area(imp.source), area(imp.target)}
    if pair == {"engine", "comfyui"}:
        return f"the local and the remote backend are independent ({imp.source} -> {imp.target})"
    return None


def _forbidden(imp: Import) -> str | None:
    rule = FORBIDDEN.get(area(imp.source))
    if rule is None or imp.target.split(".")[0] == "desktop_app":
        return None
    banned, why = rule
    for name in banned:
        if imp.target == name or imp.target.startswith(name + "."):
            return f"{area(imp.source)} imports {imp.target}: {why}"
    return None


def test_the_scan_sees_the_package():
    """Guards the test itself: it must find the modules and their imports (a broken scan passes everything)."""
    assert "desktop_app.core.requests" in MODULES and "desktop_app.cli.main" in MODULES
    targets = {(imp.source, imp.target) for imp in ALL_IMPORTS}
    assert ("desktop_app.cli.main", "desktop_app.core.paths") in targets  # `from desktop_app.core import paths`
    assert any(imp.source == "desktop_app.app.application" and imp.target.startswith("PySide6") for imp in ALL_IMPORTS)
    # function-level imports are seen: the CLI imports the engine lazily
    assert any(
        imp.source == "desktop_app.cli.main" and imp.target.startswith("desktop_app.engine") for imp in ALL_IMPORTS
    )


def test_every_module_is_in_a_layer():
    lost = [m for m in MODULES if layer(m) == "unknown"]
    assert not lost, f"modules in no layer of DESIGN.md: {lost}"


def test_imports_only_go_downward():
    problems = [f"{imp.where()}: {why}" for imp in ALL_IMPORTS if (why := _upward(imp))]
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_layers_keep_out_of_the_heavy_and_the_gui_libraries():
    problems = [f"{imp.where()}: {why}" for imp in ALL_IMPORTS if (why := _forbidden(imp))]
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan, iterative), as a path a->...->a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(sorted(component))
    cycles: list[list[str]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for component in components:
        for node in component:  # a shortest cycle through each member: every loop of a tangle is named
            cycle = _shortest_cycle(node, set(component), edges)
            key = frozenset(zip(cycle, cycle[1:]))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(first: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """first -> ... -> first inside one strongly connected component, breadth-first."""
    previous: dict[str, str] = {}
    frontier = [first]
    while frontier and first not in previous:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    path = [first]
    node = previous[first]
    while node != first:
        path.append(node)
        node = previous[node]
    path.append(first)
    return list(reversed(path))


def test_find_cycles_reports_a_cycle_as_a_path():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["e", "e"]]
    # two loops through one module are both named
    assert find_cycles({"h": {"m"}, "m": {"h", "s"}, "s": {"m"}}) == [["h", "m", "h"], ["s", "m", "s"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    lines: dict[tuple[str, str], str] = {}
    for imp in ALL_IMPORTS:
        if imp.type_checking or imp.target not in MODULES or imp.target == imp.source:
            continue
        edges[imp.source].add(imp.target)
        lines.setdefault((imp.source, imp.target), imp.where())
    cycles = find_cycles(edges)
    report = [
        " -> ".join(cycle) + "\n    " + ", ".join(lines[(a, b)] for a, b in zip(cycle, cycle[1:])) for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(report)


@pytest.mark.parametrize(
    ("source", "code", "expected"),
    [
        ("desktop_app.core.x", "from desktop_app.ui import canvas\n", "core must not import ui"),
        (
            "desktop_app.worker",
            "def f():\n    from desktop_app.model import document\n",
            "worker must not import model",
        ),
        ("desktop_app.engine.x", "from desktop_app.comfyui import client\n", "independent"),
        ("desktop_app.core.x", "import torch\n", "core imports torch"),
        ("desktop_app.model.x", "from PySide6.QtWidgets import QWidget\n", "model imports PySide6.QtWidgets"),
        ("desktop_app.ui.x", "def f():\n    import diffusers\n", "ui imports diffusers"),
        ("desktop_app.core.x", "import importlib\nimportlib.import_module('desktop_app.worker')\n", "core must not"),
    ],
)
def test_the_rules_catch_what_they_should(tmp_path, monkeypatch, source, code, expected):
    """Each rule on a made-up module, so a rule that silently stopped working fails here."""
    for fake in (
        "desktop_app.ui.canvas",
        "desktop_app.model.document",
        "desktop_app.comfyui.client",
        "desktop_app.worker",
    ):
        monkeypatch.setitem(MODULES, fake, tmp_path / "x.py")
    path = ROOT / (source.replace(".", "/") + ".py")
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: code)
    found = imports_of(source, path)
    whys = [why for imp in found for why in (_upward(imp), _forbidden(imp)) if why]
    assert any(expected in why for why in whys), whys
