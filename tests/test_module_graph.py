"""The library's shape: no module of cptlab imports another that imports it back, directly or
through others (function-level imports included), and the checkers use cptlab's public modules."""
import ast
from pathlib import Path

import cptlab

PKG = Path(cptlab.__file__).parent


def imports_of(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "cptlab":
                parts = node.module.split(".")
                names = parts[1:2] or [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cptlab.") and a.name.split(".")[1] in modules}
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PKG.glob("*.py")}
    return {m: imports_of(PKG / f"{m}.py", modules) for m in modules}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_two_cptlab_modules_import_each_other():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_study_depends_on_the_steps_never_the_reverse():
    g = graph()
    assert "lab" in g["tradeoff"] or "measure" in g["tradeoff"]
    assert "tradeoff" not in g["lab"] and "pipeline" not in g["lab"]


def test_cptlab_imports_its_own_modules_at_the_top():
    inner = []
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        inner += [f"{path.name}:{n.lineno}" for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level == 1 and id(n) not in top]
    assert not inner, inner
