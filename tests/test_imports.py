"""The package's modules import each other without a cycle, and only downwards through its layers
(import-linter's contract in pyproject.toml). Every import counts, at module level or inside a
function, since a lazy import only hides a cycle; ``if TYPE_CHECKING:`` blocks are not imports at
run time and are left out."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("benchmark", "leaderboard")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, mods: dict[str, Path]) -> set[str]:
    out: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in mods else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in out if m in mods}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(ast.parse(f.read_text()), mods) for m, f in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return [*path[path.index(w):], w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_the_package_modules():
    graph = import_graph()
    assert "benchmark.runner.executors" in graph["benchmark.runner.run"]  # the graph sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layer_contract_holds(capsys):
    """The layers of the package are import-linter's contract in pyproject.toml (`lint-imports`, run
    by `tox -e lint` too): a module imports its own layer or the layers below it, never above."""
    from importlinter.cli import lint_imports

    assert lint_imports() == 0, capsys.readouterr().out
