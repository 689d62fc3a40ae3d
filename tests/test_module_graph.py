"""The shape of the code: each package's docstring says which layers it may import ("May import:");
the import graph of cptlab and checkers together (function-level imports included) must keep to it,
hold no cycle between modules or between layers, and never lead from cptlab to checkers."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cptlab", "checkers")


def modules() -> dict[str, Path]:
    """dotted module name -> file, a package by its ``__init__.py``."""
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules ``name`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            wanted = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            wanted = [a.name for a in node.names]
        else:
            continue
        found |= {w for w in wanted if w in known}
    return found - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def layer(module: str) -> str:
    """A module's layer: its sub-package (``cptlab.model``), or the package itself for its top level."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / Path(*parts) / "__init__.py").is_file() else parts[0]


def rules() -> dict[str, set[str]]:
    """layer -> the layers its docstring says it may import."""
    out = {}
    for name, path in modules().items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        said = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
        assert said, f"{path.relative_to(ROOT)}: its docstring must say what the layer may import ('May import: ...')"
        out[name] = set(re.findall(r"\b(?:cptlab|checkers)\.\w+", said.group(1)))
    return out


def broken_rules(g: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} imports {n}"
        for m, targets in g.items()
        for n in targets
        if layer(n) != layer(m) and layer(n) not in allowed[layer(m)]
    )


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of names, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def layer_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in g.items():
        out.setdefault(layer(m), set()).update(layer(n) for n in targets if layer(n) != layer(m))
    return out


def test_every_import_keeps_to_the_layer_rules_in_the_docstrings():
    assert broken_rules(graph(), rules()) == []


def test_the_lab_never_imports_the_grader():
    g = graph()
    assert [f"{m} -> {n}" for m in g if m.startswith("cptlab") for n in g[m] if n.startswith("checkers")] == []


def test_no_import_cycle_between_modules_or_layers():
    g = graph()
    found = cycle(g)
    assert found is None, "import cycle: " + " -> ".join(found)
    found = cycle(layer_graph(g))
    assert found is None, "layer cycle: " + " -> ".join(found)


def test_the_graph_sees_every_kind_of_import():
    g = graph()
    assert "cptlab.core.config" in g["cptlab"]  # a package's __init__
    assert "cptlab.lab.steps" in g["cptlab.notebook.cells"]  # from PKG import MODULE
    assert "cptlab.lab.page" in g["checkers.grading.grade"]  # inside a function
    assert {layer(m) for m in g} >= {"cptlab", "cptlab.core", "cptlab.notebook", "checkers", "checkers.grading"}


def test_the_rule_checker_and_cycle_finder_catch_what_they_guard():
    allowed = rules()
    assert allowed["cptlab.core"] == set()
    bad = {"cptlab.core.config": {"cptlab.lab.steps"}, "cptlab.lab.steps": {"checkers.core.report"}}
    assert broken_rules(bad, allowed) == [
        "cptlab.core.config imports cptlab.lab.steps",
        "cptlab.lab.steps imports checkers.core.report",
    ]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
