"""The package's import structure: no cycles between modules, and a light import of the package.

The cycle test reads the source with ``ast``, so it sees imports inside functions too: a cycle
hidden in a function body still means the two modules cannot be understood, tested or reused
apart, and it breaks as soon as someone hoists the import. Imports under ``if TYPE_CHECKING:``
never run and are left out.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "phantomlens"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE
#: Modules allowed to import the package root (``from phantomlens import X``): the root itself and
#: the entry points, which sit above everything else.
ROOT_IMPORTERS = {PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.__main__"}
#: What ``import phantomlens`` (and the CLI's start-up) must not drag in: each costs 0.1 to 5 s.
HEAVY = ("torch", "transformers", "peft", "pandas", "numpy", "matplotlib", "pyarrow")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (their ``else`` branch stays)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported phantomlens module, line) for every runtime import in the module's source."""
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, name, path.name == "__init__.py")
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` only pkg.
            found += [(sub, node.lineno) for sub in submodules if sub in modules]
            if not any(sub in modules for sub in submodules):
                found.append((target, node.lineno))
    return [(target, line) for target, line in found if target == PACKAGE or target.startswith(PACKAGE + ".")]


def import_graph() -> dict[str, dict[str, int]]:
    """Module → {module it imports: first line of such an import}."""
    modules = all_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(name, path, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: dict[str, dict[str, int]], members: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, through the component."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    return [*paths[node], start]
                if target in members and target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) → {b}" for a, b in itertools.pairwise(cycle)]
    return "; ".join(steps)


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/phantomlens (break each by moving what both sides need):\n" + (
        "\n".join(f"  {' → '.join(c)}: {describe(c, graph)}" for c in cycles)
    )


def test_modules_do_not_import_the_package_root():
    # The root re-exports from every module; a module importing it would depend on all of them.
    offenders = [
        f"{name} line {line}"
        for name, edges in import_graph().items()
        if name not in ROOT_IMPORTERS
        for target, line in edges.items()
        if target == PACKAGE
    ]
    assert not offenders, "import from phantomlens.<module> (the version: phantomlens.version): " + ", ".join(
        offenders
    )


def test_the_cycle_finder_names_the_cycle():
    graph = {"a": {"b": 3}, "b": {"c": 7}, "c": {"a": 1}, "d": {"a": 2}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 3) → b; b (line 7) → c; c (line 1) → a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_imports_are_read_from_function_bodies_but_not_type_checking_blocks(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "from phantomlens import errors\n"
        "if TYPE_CHECKING:\n"
        "    from phantomlens.train import RunConfig\n"
        "def f():\n"
        "    from phantomlens.models import load_model\n"
        "    from . import version\n"
        "    from phantomlens import __version__\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = {f"{PACKAGE}.{m}": Path() for m in ("errors", "train", "models", "version")}
    found = sorted(imports_of(f"{PACKAGE}.mod", path, modules), key=lambda edge: edge[1])
    assert found == [
        (f"{PACKAGE}.errors", 2),
        (f"{PACKAGE}.models", 6),
        (f"{PACKAGE}.version", 7),
        (PACKAGE, 8),
    ]


def test_exports_all_and_type_checking_block_agree():
    import phantomlens

    assert set(phantomlens.__all__) == {*phantomlens._EXPORTS, "__version__"}
    tree = ast.parse((SOURCE / "__init__.py").read_text())
    declared = {
        alias.asname or alias.name: node.module
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert declared == phantomlens._EXPORTS


def test_every_export_resolves_to_the_module_the_mapping_names():
    import importlib

    import phantomlens

    for name, module in phantomlens._EXPORTS.items():
        assert getattr(phantomlens, name) is getattr(importlib.import_module(module), name), name


def test_an_export_named_like_its_module_stays_the_export():
    # ``sweep`` is both a function and the module defining it; importing the module must not
    # replace the function on the package (as it would with a plain PEP 562 __getattr__).
    code = (
        "import phantomlens.sweep\n"
        "import phantomlens\n"
        "from phantomlens import sweep\n"
        "assert callable(sweep) and not isinstance(sweep, type(phantomlens)), sweep\n"
        "assert phantomlens.sweep is sweep\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_loads_nothing_heavy():
    loaded = _loaded_after("import phantomlens; import phantomlens.errors; import phantomlens.config")
    assert loaded == [], f"import phantomlens loaded {loaded}"


@pytest.mark.parametrize("module", ["version", "atomic", "models", "plot", "report", "classify", "calibrate"])
def test_light_modules_load_nothing_heavy(module):
    # These import their heavy dependencies inside the functions that need them.
    loaded = _loaded_after(f"import phantomlens.{module}")
    assert loaded == [], f"import phantomlens.{module} loaded {loaded}"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["--version"]])
def test_command_line_help_loads_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from phantomlens.cli import main\n"
        f"sys.argv = ['phantomlens', *{argv!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    loaded = _loaded_after(code)
    assert loaded == [], f"phantomlens {' '.join(argv)} loaded {loaded}"


def test_exports_resolve_lazily_to_their_definitions():
    code = (
        "import phantomlens, sys\n"
        "assert 'phantomlens.errors' not in sys.modules\n"
        "from phantomlens import PhantomLensError\n"
        "from phantomlens.errors import PhantomLensError as direct\n"
        "assert PhantomLensError is direct\n"
        "import phantomlens.version\n"
        "assert phantomlens.__version__ == phantomlens.version.__version__\n"
        "try:\n"
        "    phantomlens.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_function_in_the_package_is_longer_than_a_screen():
    """Each function readable at a glance: the package keeps every function within 60 lines."""
    long = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
