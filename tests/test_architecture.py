"""The package's shape: no import cycles between modules of ``src/mcqtune`` (and of ``bench/``).

The graph is built from the source with ``ast``, function-level imports included (a cycle hidden in a
function body still ties two modules together); imports under ``if TYPE_CHECKING:`` never run and are
left out. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root/package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _closest_module(name: str, known: dict[str, Path]) -> str | None:
    """``name`` itself if it is a known module, else its longest known parent package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that ``name`` (the module in ``path``) runs by importing, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = {_closest_module(target, known) for target in targets} - {None, name}
    # Importing ``a.b.c`` also runs the ``a.b`` package (its __init__), unless the importer is inside it.
    parents = {
        ".".join(module.split(".")[:end]) for module in found for end in range(1, module.count(".") + 1)
    }
    own = {".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 2)}
    return found | ((parents & set(known)) - own)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    known = module_names(root, package)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        iterators = [iter(sorted(graph[start]))]
        while iterators:
            following = next(iterators[-1], None)
            if following is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                iterators.append(iter(sorted(graph.get(following, ()))))
    return None


@pytest.mark.parametrize("package", ["src/mcqtune", "bench"])
def test_no_import_cycles(package):
    graph = import_graph((ROOT / package).parent, Path(package).name)
    assert len(graph) > 3, f"no modules found under {package}"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_reports_the_path(tmp_path):
    """The checker itself: a cycle through a function-level relative import is found, TYPE_CHECKING is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


# The code style's size limits (docs/ARCHITECTURE.md): a module a reader can hold, a function read top to
# bottom. Function length counts from the ``def`` line to the last line of its body, nested ones included.
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 150
PACKAGE = ROOT / "src" / "mcqtune"


def function_lengths(source: str, filename: str = "<source>") -> dict[str, int]:
    """Qualified name (``Class.method``, ``outer.inner``) -> lines, for every function in ``source``."""
    lengths: dict[str, int] = {}
    stack: list[tuple[ast.AST, str]] = [(ast.parse(source, filename), "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                name += "."
            stack.append((child, name))
    return lengths


def test_no_module_over_the_line_limit():
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    over = sorted(
        f"{path.relative_to(ROOT)} ({n} lines)" for path, n in sizes.items() if n > MAX_MODULE_LINES
    )
    assert len(sizes) > 3
    assert not over, f"over {MAX_MODULE_LINES} lines, split along their seams: " + ", ".join(over)


def test_no_function_over_the_line_limit():
    over = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lengths = function_lengths(path.read_text(encoding="utf-8"), str(path))
        over += [
            f"{path.relative_to(ROOT)}: {name} ({n} lines)"
            for name, n in lengths.items()
            if n > MAX_FUNCTION_LINES
        ]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(over)


def test_the_function_measure_counts_each_function_with_its_qualified_name():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    source = f"class A:\n    def f(self):\n        def inner():\n            pass\n\n\ndef g():\n{body}"
    assert function_lengths(source) == {"A.f": 3, "A.f.inner": 2, "g": MAX_FUNCTION_LINES}


def test_serving_and_compare_do_not_import_the_training_recipe():
    """They use the training stage's entry points (``training/api.py``) and the shared constants
    (``artifacts.py``), so the recipe's inside can change shape without touching them."""
    graph = import_graph(ROOT / "src", "mcqtune")
    users = sorted(
        module
        for module, imports in graph.items()
        if module.startswith(("mcqtune.serving", "mcqtune.compare")) and "mcqtune.training.recipe" in imports
    )
    assert any(module.startswith("mcqtune.serving") for module in graph)
    assert not users, "import mcqtune.training.recipe (use mcqtune.training.api): " + ", ".join(users)
