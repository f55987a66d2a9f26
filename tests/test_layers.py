"""The import graph keeps the layers of DESIGN.md: steps are peers, the library never imports the server, and no
import (at module level or inside a function) closes a cycle between modules."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"wtag": REPO / "src" / "wtag", "serving": REPO / "serving"}
STEPS = ("wtag.prepare", "wtag.training", "wtag.tuning", "wtag.evaluation", "wtag.onnx_export")
# Below the steps: what they may share. None of these imports a step or the pipeline.
LOWER = ("wtag.schema", "wtag.errors", "wtag.fileio", "wtag.jets", "wtag.dataset", "wtag.features", "wtag.sources",
         "wtag.metrics", "wtag.plots", "wtag.taggers", "wtag.inference", "wtag.runs", "wtag.registry",
         "wtag.tracking", "wtag.tracking_server")


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module ``name`` imports, wherever the import statement stands, also through
    ``importlib.import_module("...")`` or ``__import__("...")`` with a literal name."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        out |= {t for t in _targets(node, package) if t in MODULES and t != name}
    return out


def _targets(node: ast.AST, package: list[str]) -> list[str]:
    """The module names one AST node imports (with each imported name as a possible submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and (node.module or node.level):
        base = ".".join([*package[:len(package) - node.level + 1], node.module or ""]).strip(".") \
            if node.level else node.module
        return [base, *(f"{base}.{a.name}" for a in node.names)]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if called in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_steps_never_import_each_other():
    for step in STEPS:
        assert not GRAPH[step] & (set(STEPS) - {step}), f"{step} imports {sorted(GRAPH[step] & set(STEPS))}"


def test_lower_layers_never_import_steps_or_the_pipeline():
    for module, deps in GRAPH.items():
        if _within(module, LOWER):
            above = {d for d in deps if _within(d, (*STEPS, "wtag.pipeline", "wtag.cli"))}
            assert not above, f"{module} imports {sorted(above)}"


def test_the_library_never_imports_the_server():
    for module, deps in GRAPH.items():
        if module.startswith("wtag"):
            assert not {d for d in deps if d.startswith("serving")}, f"{module} imports the server"


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_through_importlib_strings_count():
    code = "import importlib\nimportlib.import_module('serving.protocols')\n__import__('wtag.schema')\n" \
           "from importlib import import_module\nimport_module('wtag.jets')\nimportlib.import_module(name)\n"
    found = {t for node in ast.walk(ast.parse(code)) for t in _targets(node, ["serving"])}
    assert found >= {"serving.protocols", "wtag.schema", "wtag.jets"}
    assert "serving.protocols" not in GRAPH["serving.service"], "the service imports the protocols"


def test_no_function_is_longer_than_100_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
