"""The import contract of the package: no import circles between dlqnb's modules, no import upward
through the stage layers, a docstring on every subpackage, and a light ``import dlqnb``.

Every import counts, wherever it is written: module level, inside functions and methods, relative
imports and ``importlib.import_module("dlqnb...")`` with a literal name. Only imports under
``if TYPE_CHECKING:`` are left out (they never run).

The checker is plain functions over a package folder, so it runs on any layout::

    python tests/test_import_contract.py [PACKAGE_FOLDER] [--cycles-only]
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict, deque
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dlqnb"

#: The stage layers, top to bottom. A layer's groups are independent siblings: none imports another.
#: A module may import its own group's modules and anything in a lower layer.
LAYERS: list[list[str]] = [
    ["dlqnb"],  # the package __init__ and dlqnb.__main__
    ["dlqnb.bench"],
    ["dlqnb.reports", "dlqnb.training"],
    ["dlqnb.ui", "dlqnb.recipes"],
    ["dlqnb.deploy", "dlqnb.pruning"],
    ["dlqnb.quantizer"],
    ["dlqnb.evaluation"],
    ["dlqnb.emulation"],
    ["dlqnb.plan"],
    ["dlqnb.calibration", "dlqnb.preparation"],
    ["dlqnb.data", "dlqnb.models"],
    ["dlqnb.core"],
    ["dlqnb.errors"],
]


class Import(NamedTuple):
    """One import of a dlqnb module by another: where it is written and what it loads."""

    importer: str  # dotted module name
    path: Path
    line: int
    imported: str  # dotted module name

    def __str__(self) -> str:
        return f"{self.importer} ({self.path}:{self.line}) imports {self.imported}"


# ---------------------------------------------------------------------------------------------- graph
def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by dotted name (a package by its ``__init__``)."""
    package_dir = Path(package_dir)
    root = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Collects ``(line, dotted name, relative level, names imported from it)`` for every import that runs."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str, int, list[str]]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the TYPE_CHECKING body never runs; its else does
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, alias.name, 0, []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node.lineno, node.module or "", node.level, [alias.name for alias in node.names]))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called == "import_module" and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self.found.append((node.lineno, node.args[0].value, 0, []))
        self.generic_visit(node)


def _known(name: str, modules: dict[str, Path]) -> str:
    """The module ``name`` loads: itself, or its longest existing parent (a name inside a module)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def module_imports(package_dir: Path) -> list[Import]:
    """Every import of one of the package's modules by another, in file and line order."""
    modules = module_names(package_dir)
    root = Path(package_dir).name
    result = []
    for importer, path in modules.items():
        collector = _ImportCollector()
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for line, name, level, from_names in collector.found:
            if level:  # relative: from the importer's package, up level - 1
                base = package.split(".")
                base = base[: len(base) - (level - 1)]
                name = ".".join(base + ([name] if name else []))
            if name != root and not name.startswith(root + "."):
                continue
            # ``from pkg import x`` loads the module pkg.x when there is one, else pkg (x is a name in it)
            targets = {f"{name}.{alias}" if f"{name}.{alias}" in modules else _known(name, modules) for alias in from_names}
            targets = targets or {_known(name, modules)}
            for target in sorted(targets):
                if target != importer:
                    result.append(Import(importer, path.relative_to(Path(package_dir).parent), line, target))
    return result


# ---------------------------------------------------------------------------------------------- circles
def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
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
                components.append(sorted(component))
    return components


def import_cycles(imports: list[Import]) -> list[list[Import]]:
    """Import circles: for every module that lies on one, a shortest circle through it (each circle once)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in imports:
        graph[edge.importer].add(edge.imported)
        graph.setdefault(edge.imported, set())
    first_edge = {}
    for edge in imports:
        first_edge.setdefault((edge.importer, edge.imported), edge)
    circles, seen = [], set()
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        for start in component:  # breadth-first: the shortest way back to start inside the component
            parent = {start: None}
            queue = deque([start])
            closing = None
            while queue and closing is None:
                node = queue.popleft()
                for successor in sorted(graph[node] & members):
                    if successor == start:
                        closing = node
                        break
                    if successor not in parent:
                        parent[successor] = node
                        queue.append(successor)
            path = [closing]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            path.reverse()  # start ... closing
            loop = path + [start]
            key = frozenset(zip(loop, loop[1:]))
            if key not in seen:
                seen.add(key)
                circles.append([first_edge[pair] for pair in zip(loop, loop[1:])])
    return circles


def describe_cycles(circles: list[list[Import]]) -> str:
    return "\n".join("import circle:\n" + "\n".join(f"    {edge}" for edge in circle) for circle in circles)


# ---------------------------------------------------------------------------------------------- layers
def group_of(module: str) -> str:
    """The layer group of a module: its first-level subpackage or module; ``dlqnb.__main__`` is the top."""
    parts = module.split(".")
    return parts[0] if len(parts) == 1 or parts[1] == "__main__" else ".".join(parts[:2])


def layer_violations(imports: list[Import], layers: list[list[str]] = LAYERS) -> list[str]:
    """Imports upward through ``layers`` or between siblings of a layer, and modules in no layer."""
    level = {group: depth for depth, groups in enumerate(layers) for group in groups}
    problems = []
    unplaced = sorted({group_of(m) for edge in imports for m in (edge.importer, edge.imported)} - set(level))
    problems += [f"{group} is in no layer of the import contract: add it to LAYERS" for group in unplaced]
    for edge in imports:
        source, target = group_of(edge.importer), group_of(edge.imported)
        if source == target or source not in level or target not in level:
            continue
        if level[target] < level[source]:
            problems.append(f"upward import: {edge} (layer of {target} is above {source})")
        elif level[target] == level[source]:
            problems.append(f"sibling import: {edge} ({source} and {target} are independent)")
    return problems


# ---------------------------------------------------------------------------------------------- docstrings
def subpackage_docstring_problems(package_dir: Path) -> list[str]:
    """Subpackages whose ``__init__`` docstring does not say what the subpackage does and exports.

    The docstring must exist and name what the subpackage gives: each name it exports (``__all__`` or
    the names its ``__init__`` imports) or the module that name comes from; a subpackage that
    exports nothing from its ``__init__`` names each of its public modules.
    """
    modules = module_names(package_dir)
    root = Path(package_dir).name
    problems = []
    for name, path in modules.items():
        if path.name != "__init__.py" or name == root:
            continue
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree) or ""
        if len(doc.split()) < 8:
            problems.append(f"{path}: the docstring must say what {name} does and exports")
            continue
        exported: dict[str, str] = {}  # name -> the module it comes from
        star_sources = []
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(name + "."):
                for alias in node.names:
                    if alias.name == "*":
                        star_sources.append(node.module)
                    elif not (alias.asname or alias.name).startswith("_"):
                        exported[alias.asname or alias.name] = node.module
        def named(word: str) -> bool:
            return re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", doc) is not None

        missing = [n for n, source in exported.items() if not named(n) and not named(source)]
        missing += [f"every name of {source}" for source in star_sources if not named(source)]
        if not exported and not star_sources:
            public = [m for m in modules if m.rpartition(".")[0] == name and not m.rpartition(".")[2].startswith("_")]
            missing += [m for m in public if not named(m)]
        if missing:
            problems.append(f"{path}: the docstring of {name} does not name {', '.join(sorted(missing))}")
    return problems


# ---------------------------------------------------------------------------------------------- tests
def test_no_import_circle_between_dlqnb_modules():
    circles = import_cycles(module_imports(PACKAGE))
    assert not circles, describe_cycles(circles)


def test_no_module_imports_a_layer_above_it_or_a_sibling():
    problems = layer_violations(module_imports(PACKAGE))
    assert not problems, "\n".join(problems)


def test_every_subpackage_says_what_it_does_and_exports():
    problems = subpackage_docstring_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_import_dlqnb_loads_neither_the_ui_libraries_nor_training():
    code = "import json, sys, dlqnb; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent).stdout)
    heavy = [m for m in loaded if m.split(".")[0] in ("plotly", "ipywidgets", "anywidget") or m == "dlqnb.training" or m.startswith("dlqnb.training.")]
    assert heavy == []


# A small package written to break each rule, so that the checker is seen to catch what it is for.
FIXTURE = {
    "__init__.py": '"""Top."""\nfrom pkg.low import thing\n',
    "__main__.py": "import pkg\n",
    "low/__init__.py": '"""The low layer: its modules are pkg.low.a and pkg.low.b, both public."""\n',
    "low/a.py": "def f():\n    from pkg.low import b  # function level\n",
    "low/b.py": "from . import a  # relative\n",
    "high/__init__.py": "",
    "high/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.mid import y\n",
    "mid/__init__.py": '"""The middle layer: exports zeta, the one thing it is for."""\nfrom pkg.mid.y import zeta, omega\n',
    "mid/y.py": "import importlib\nfrom pkg import __version__\ndef g():\n    return importlib.import_module('pkg.high.x')\n",
}
FIXTURE_LAYERS = [["pkg"], ["pkg.high"], ["pkg.mid"], ["pkg.low"]]


@pytest.fixture
def broken_package(tmp_path: Path) -> Path:
    for relative, text in FIXTURE.items():
        path = tmp_path / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_the_checker_finds_function_level_relative_and_string_imports_but_not_type_checking_ones(broken_package):
    edges = {(e.importer, e.imported, e.line) for e in module_imports(broken_package)}
    assert ("pkg.low.a", "pkg.low.b", 2) in edges  # function level, from a package: the module
    assert ("pkg.low.b", "pkg.low.a", 1) in edges  # relative
    assert ("pkg.mid.y", "pkg.high.x", 4) in edges  # importlib.import_module with a literal
    assert ("pkg.mid.y", "pkg", 2) in edges  # a name from the top package: the package itself
    assert ("pkg", "pkg.low", 2) in edges  # a name from a package's __init__
    assert not any(importer == "pkg.high.x" for importer, _, _ in edges)  # only under TYPE_CHECKING


def test_the_checker_names_each_circle_with_its_lines(broken_package):
    circles = [{(e.importer, e.line, e.imported) for e in circle} for circle in import_cycles(module_imports(broken_package))]
    assert {("pkg.low.a", 2, "pkg.low.b"), ("pkg.low.b", 1, "pkg.low.a")} in circles
    assert {("pkg", 2, "pkg.low"), ("pkg.low", 2, "pkg.low.a")} not in circles  # not a circle: pkg.low imports nothing
    assert {("pkg.mid.y", 2, "pkg"), ("pkg", 2, "pkg.low")} not in circles
    text = describe_cycles(import_cycles(module_imports(broken_package)))
    assert "pkg.low.a (pkg/low/a.py:2) imports pkg.low.b" in text


def test_the_checker_finds_upward_imports_and_allows_downward_and_own_package_ones(broken_package):
    problems = layer_violations(module_imports(broken_package), FIXTURE_LAYERS)
    assert problems == [
        "upward import: pkg.mid.y (pkg/mid/y.py:2) imports pkg (layer of pkg is above pkg.mid)",
        "upward import: pkg.mid.y (pkg/mid/y.py:4) imports pkg.high.x (layer of pkg.high is above pkg.mid)",
    ]
    siblings = layer_violations(module_imports(broken_package), [["pkg"], ["pkg.high", "pkg.mid"], ["pkg.low"]])
    assert "sibling import: pkg.mid.y (pkg/mid/y.py:4) imports pkg.high.x (pkg.mid and pkg.high are independent)" in siblings
    assert "pkg.low is in no layer of the import contract: add it to LAYERS" in layer_violations(module_imports(broken_package), [["pkg"], ["pkg.mid"]])


def test_the_checker_finds_subpackages_that_do_not_say_what_they_export(broken_package):
    problems = subpackage_docstring_problems(broken_package)
    assert len(problems) == 2
    assert "high/__init__.py: the docstring must say what pkg.high does and exports" in problems[0]
    assert problems[1].endswith("the docstring of pkg.mid does not name omega")


# ---------------------------------------------------------------------------------------------- command line
def main(argv: list[str]) -> int:
    """Print the circles (and, unless ``--cycles-only``, the layer and docstring problems) of a package folder."""
    folder = Path(next((a for a in argv if not a.startswith("--")), PACKAGE))
    imports = module_imports(folder)
    print(f"{folder}: {len(module_names(folder))} modules, {len(imports)} imports between them")
    circles = import_cycles(imports)
    print(describe_cycles(circles) if circles else "no import circle")
    problems = [] if "--cycles-only" in argv else layer_violations(imports) + subpackage_docstring_problems(folder)
    for problem in problems:
        print(problem)
    return 1 if circles or problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
