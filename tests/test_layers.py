"""earmark's modules import one way: from the bottom, errors and files; audio; models and data;
infer; evaluate; train; export; cli. Every import a module runs counts (those inside
functions too). Imports for type checkers only (``if TYPE_CHECKING:``) may name a module of
the same layer or below, and count for circles too: where two modules need each other's
types, one of them names a small Protocol instead."""

from __future__ import annotations

import ast
from pathlib import Path

import earmark

PACKAGE = Path(earmark.__file__).parent
# earmark.<first part> -> layer; modules of one layer may import each other (without circles)
LAYERS = {"errors": 0, "files": 0, "quiet": 0, "steps": 0, "_version": 0, "resources": 0,
          "audio": 1, "models": 2,
          "data": 2, "voices": 2, "infer": 3, "evaluate": 4, "profile": 4, "serve": 4, "train": 5,
          "export": 6, "cli": 7, "demo": 7, "__main__": 7}
TOP = 8  # the package itself: its lazy public API may name anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return TOP if len(parts) == 1 else LAYERS[parts[1]]


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, modules: set[str], type_checking: bool = False) -> set[str]:
    """The earmark modules ``path`` imports at run time (and for type checkers too, with
    ``type_checking``)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def graph(type_checking: bool = False) -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(files), type_checking) for m, p in files.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert not [m for m in graph() if len(m.split(".")) > 1 and m.split(".")[1] not in LAYERS]


def test_no_import_runs_up_the_layers():
    up = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                if layer(t) > layer(m))
    assert not up


def test_no_circles_between_modules():
    assert not circles(graph())


def test_no_circles_even_through_imports_for_type_checkers():
    assert not circles(graph(type_checking=True))


def test_no_import_for_type_checkers_runs_up_the_layers():
    up = sorted(f"{m} -> {t}" for m, targets in graph(type_checking=True).items()
                for t in targets if layer(t) > layer(m))
    assert not up


def test_the_checks_see_what_they_should():
    # the walk finds imports inside functions and relative ones, and the circle finder a circle
    edges = graph()
    assert "earmark.infer.tagger" in edges["earmark.cli.use"]  # imported inside a function
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # a name imported only for type checkers is seen by the stricter walk alone
    typed = graph(type_checking=True)
    assert all(edges[m] <= typed[m] for m in edges)
    assert any(edges[m] != typed[m] for m in edges)
