"""The house as docs/architecture.md draws it: every import in src/wrn runs down the layers or
within one, and no modules import each other in a circle.

Imports are read from the source with ``ast``: at module top and inside functions alike (an
in-function import is an arrow too). Imports under ``if TYPE_CHECKING:`` are left out: they never run
(train/pace.py names run.RunState in annotations that way, and run.py imports pace.py). Dynamic imports (``importlib``: the package's lazy public API in
``wrn/__init__.py``, cli.py loading ``wrn.commands.<name>``) are not arrows here: both run down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top, as docs/architecture.md lists them; a module may import from its own layer and
# the layers below. A name ending in "." stands for a package and everything in it.
LAYERS = [
    ("foundations", ("wrn.errors", "wrn.fsio", "wrn.units", "wrn.rundir")),
    ("models", ("wrn.models.",)),
    ("data", ("wrn.data.",)),
    ("training", ("wrn.train.",)),
    ("measurement", ("wrn.bench", "wrn.timing", "wrn.inference", "wrn.export", "wrn.importer")),
    ("experiments", ("wrn.experiments.",)),
    ("public API", ("wrn",)),  # wrn/__init__.py
    ("command line", ("wrn.commands.", "wrn.cli", "wrn.__main__")),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(root: Path = SRC) -> dict[str, str]:
    """{module name: source} of every module under root/wrn."""
    return {module_name(p, root): p.read_text() for p in sorted((root / "wrn").rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, source: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports, wherever the import statement sits."""
    package = name if any(m.startswith(name + ".") for m in modules) else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:  # `from wrn import rundir` imports a module; `from wrn import X` the package
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {m for m in found if m in modules and m != name}


def graph(srcs: dict[str, str]) -> dict[str, set[str]]:
    modules = set(srcs)
    return {name: imports(name, text, modules) for name, text in srcs.items()}


def layer(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or (n.endswith(".") and module.startswith(n)) or module == n.rstrip(".") for n in names):
            return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
                  for a, targets in edges.items() for b in targets if layer(b) > layer(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of imports (a strongly connected component of more than one module, or a
    module importing itself), found with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_every_module_sits_in_a_layer():
    for name in sources():
        layer(name)


def test_no_import_runs_upward():
    assert upward(graph(sources())) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(graph(sources())) == []


def test_in_function_imports_are_read_too():
    edges = graph(sources())
    assert "wrn.train.config" in edges["wrn.commands.train"]  # imported inside run()/add_arguments()
    assert "wrn.train.validate" in edges["wrn.train.config"]  # imported inside config.validate()


def test_control_the_checker_flags_a_synthetic_circle_and_upward_import():
    fake = {
        "wrn.errors": "",
        "wrn.models.net": "from wrn.errors import UserError\n\ndef f():\n    from wrn.train import loop\n",
        "wrn.train": "",
        "wrn.train.loop": "import wrn.train.plan\n",
        "wrn.train.plan": "from wrn.train.loop import x\n",
        "wrn.train.typed": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from wrn.commands import c\n",
        "wrn.commands": "",
        "wrn.commands.c": "from wrn.train import loop\n",
    }
    edges = graph(fake)
    assert upward(edges) == ["wrn.models.net (models) imports wrn.train.loop (training)"]
    assert cycles(edges) == [["wrn.train.loop", "wrn.train.plan"]]
    assert edges["wrn.train.typed"] == set()  # TYPE_CHECKING imports never run: not arrows
    with pytest.raises(KeyError, match="no layer"):
        layer("wrn.nowhere")
