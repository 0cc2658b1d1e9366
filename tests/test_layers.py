"""The package's import structure: no loop between hf_soups' folders/top-level modules, no import of the root.

Every import counts, lazy ones inside functions and `TYPE_CHECKING` blocks included: a lazy import still makes one
layer depend on another.
"""

from __future__ import annotations

import ast
import os

import hf_soups

PACKAGE_DIR = os.path.dirname(hf_soups.__file__)


def _modules() -> dict[str, str]:
    """`{dotted module name: path}` of every module in the package."""
    out = {}
    root = os.path.dirname(PACKAGE_DIR)
    for dirpath, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: str, modules: dict[str, str]) -> list[tuple[str, int]]:
    """`(imported hf_soups module, line)` for every import in the file; `"hf_soups"` for the package root."""
    is_package = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from x import submodule` imports the submodule; a name imports x itself
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return [(m, line) for m, line in found if m == "hf_soups" or m.startswith("hf_soups.")]


def _unit(module: str) -> str:
    """The layer a module belongs to: `hf_soups.x` for a top-level module or a subpackage's whole tree."""
    return ".".join(module.split(".")[:2])


def _graph() -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    modules = _modules()
    edges: dict[str, dict[str, list[str]]] = {}
    root_imports = []
    for name, path in modules.items():
        for target, line in _imports(name, path, modules):
            where = f"{os.path.relpath(path, os.path.dirname(PACKAGE_DIR))}:{line}"
            if target == "hf_soups":
                root_imports.append(f"{where} imports the package root")
                continue
            a, b = _unit(name), _unit(target)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, []).append(where)
    return edges, root_imports


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one layer (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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
                out.append(sorted(component))

    for v in sorted(set(edges) | {w for targets in edges.values() for w in targets}):
        if v not in index:
            visit(v)
    return out


def test_no_import_loop_between_layers():
    edges, _ = _graph()
    loops = _cycles(edges)
    detail = [
        f"{a} -> {b} ({', '.join(edges[a][b][:2])})"
        for component in loops for a in component for b in component if b in edges.get(a, {})
    ]
    assert not loops, "import loops between layers:\n" + "\n".join(detail)


def test_no_import_of_the_package_root_from_inside():
    _, root_imports = _graph()
    assert not root_imports, "\n".join(root_imports)


def test_the_checker_sees_loops_and_root_imports(tmp_path):
    """The checker itself: a planted loop and a planted root import are found (guards against a vacuous pass)."""
    edges = {"hf_soups.a": {"hf_soups.b": ["a.py:1"]}, "hf_soups.b": {"hf_soups.c": ["b.py:1"]},
             "hf_soups.c": {"hf_soups.a": ["c.py:1"]}, "hf_soups.d": {"hf_soups.a": ["d.py:1"]}}
    assert _cycles(edges) == [["hf_soups.a", "hf_soups.b", "hf_soups.c"]]
    module = tmp_path / "hf_soups" / "sub" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("from .. import __version__\nfrom ..errors import SoupError\nimport hf_soups.sub.y\n"
                      "def f():\n    from ..constants import X\n")
    found = _imports("hf_soups.sub.x", str(module), {"hf_soups.errors": "", "hf_soups.sub.y": ""})
    assert ("hf_soups", 1) in found and ("hf_soups.errors", 2) in found and ("hf_soups.sub.y", 3) in found
    assert _unit("hf_soups.sub.y") == "hf_soups.sub" and _unit("hf_soups.api") == "hf_soups.api"
    # the real package is parsed: it has layers and edges between them
    edges, _ = _graph()
    assert {"hf_soups.api", "hf_soups.merge", "hf_soups.checkpoint"} <= set(edges)


def _file_graph() -> dict[str, dict[str, list[str]]]:
    """`{module: {imported module: [file:line, ...]}}` between the package's files: every `import` and `from ...
    import` counts, lazy ones inside functions included (a package's `__init__` is a file of its own; the implicit
    import of a parent package is not counted)."""
    modules = _modules()
    edges: dict[str, dict[str, list[str]]] = {}
    for name, path in modules.items():
        for target, line in _imports(name, path, modules):
            if target != name and target in modules:
                where = f"{os.path.relpath(path, os.path.dirname(PACKAGE_DIR))}:{line}"
                edges.setdefault(name, {}).setdefault(target, []).append(where)
    return edges


def test_no_import_circle_between_files():
    """No two files of the package import each other, directly or through others (issue #23 item 6)."""
    edges = _file_graph()
    circles = _cycles(edges)
    detail = [f"{a} -> {b} ({', '.join(edges[a][b][:2])})"
              for component in circles for a in component for b in component if b in edges.get(a, {})]
    assert not circles, "import circles between files:\n" + "\n".join(detail)


def test_the_file_graph_sees_a_lazy_import_circle(tmp_path):
    """The file-level checker itself: a circle closed by an import inside a function is found."""
    pkg = tmp_path / "hf_soups" / "evaluation"
    pkg.mkdir(parents=True)
    (pkg / "data.py").write_text("def check():\n    from .tasks import task_for\n")
    (pkg / "tasks.py").write_text("from .data import find_column\n")
    modules = {"hf_soups.evaluation.data": str(pkg / "data.py"), "hf_soups.evaluation.tasks": str(pkg / "tasks.py")}
    edges = {name: {t: [f"{name}:{line}"] for t, line in _imports(name, path, modules)}
             for name, path in modules.items()}
    assert _cycles(edges) == [["hf_soups.evaluation.data", "hf_soups.evaluation.tasks"]]
    # the real package is parsed file by file: evaluator imports the task registry
    assert "hf_soups.evaluation.tasks" in _file_graph()["hf_soups.evaluation.evaluator"]


def test_loopback_hub_routes_are_small_modules():
    """#23 item 7: the loopback Hub's handler is route modules over a small dispatcher, not one closure: no function
    of `hf_soups/testing` spans more than 80 lines, and the handler class is composed of the route mixins."""
    from hf_soups.testing.hub import LoopbackHub

    long = []
    for name, path in _modules().items():
        if name.startswith("hf_soups.testing"):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            long += [f"{name}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, "\n".join(long)
    with LoopbackHub() as hub:
        handler = hub._server.RequestHandlerClass
        owners = {cls.__module__ for cls in handler.__mro__}
    assert {f"hf_soups.testing.hub_routes.{m}" for m in ("base", "models", "files", "upload", "listing",
                                                         "collections")} <= owners
