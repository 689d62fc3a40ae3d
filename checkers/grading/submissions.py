"""A learner's submitted notebooks: reading them safely, taking only their answer cells, and
putting each where it belongs in the instructor's pristine notebook by meaning (the function it
defines, the W tag), never by position.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from checkers.core.questions import QUESTIONS

MAX_NOTEBOOK_BYTES = 20 << 20  # a submitted notebook is JSON text; anything larger is refused unread


ANSWER_TAGS = {"solution", "answer"}


def _answer_cells(nb) -> list:
    return [c for c in nb.cells if ANSWER_TAGS & set(c.get("metadata", {}).get("tags", []))]


def read_submission(path: Path):
    """A submitted notebook, read as JSON text only (never executed or unpickled here)."""
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(path)
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{path.name} is not a regular file")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
    return nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)


def defined_functions(source: str) -> list[str]:
    """The names of the functions a code cell defines at its top level (none if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return [m.group(1) for m in re.finditer(r"^def\s+(\w+)\s*\(", source, re.M)]
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _written_tag(cell) -> str | None:
    return next(
        (t for t in cell.get("metadata", {}).get("tags", []) if t in QUESTIONS and QUESTIONS[t].kind == "written"), None
    )


@dataclass
class Merge:
    notebook: object  # the pristine notebook with the learner's answers in place
    answers: dict[str, str]  # pristine cell id -> the source it got
    notices: list[str] = field(default_factory=list)  # what the matching could not do plainly


def merge_answers(pristine, submitted) -> Merge:
    """The pristine notebook with the learner's answers put where they belong, matched by meaning:
    a code cell by the learner functions it defines (``def corpus_perplexity``), a written answer by
    its W tag, anything else by cell id; never by position. A cell that defines two of the asked
    functions serves both; an answer cell that defines none of them runs before the first answer
    cell (a helper), and both are reported."""
    merged = nbformat.reads(nbformat.writes(pristine), as_version=4)
    mine = _answer_cells(merged)
    asked = [f for c in mine if c.cell_type == "code" for f in defined_functions(c.source)]
    theirs = _answer_cells(submitted)
    code = [
        (i, c, [f for f in defined_functions(c.source) if f in asked])
        for i, c in enumerate(theirs)
        if c.cell_type == "code"
    ]
    by_tag = {_written_tag(c): c for c in theirs if c.cell_type == "markdown" and _written_tag(c)}
    by_id = {c.get("id"): (i, c) for i, c in enumerate(theirs) if c.get("id")}
    notices, used, provided = [], set(), set()
    home = {f: c.id for c in mine if c.cell_type == "code" for f in defined_functions(c.source)}
    for i, c, fs in code:
        if len({home[f] for f in fs}) > 1:
            notices.append(f"one answer cell defines {', '.join(fs)}: it stands in the cell of {fs[0]}")
    for cell in mine:
        src = None
        if cell.cell_type == "code" and defined_functions(cell.source):
            fs = defined_functions(cell.source)
            hits = [(i, c) for i, c, f in code if set(f) & set(fs) and i not in used]
            if hits:
                src = "\n\n".join(c.source for _, c in hits)
                used.update(i for i, _ in hits)
                provided.update(name for j, _, fl in code if j in used for name in fl)
            elif set(fs) <= provided:
                src = f"# {', '.join(fs)}: defined in an earlier answer cell"
        elif cell.cell_type == "markdown" and _written_tag(cell):
            src = getattr(by_tag.get(_written_tag(cell)), "source", None)
        if src is None:
            j, other = by_id.get(cell.get("id"), (None, None))
            if (
                other is not None
                and other.cell_type == cell.cell_type
                and not (cell.cell_type == "code" and defined_functions(cell.source))
            ):
                src = other.source
                used.add(j)
        if src is not None:
            cell.source = src
    helpers = [c.source for i, c, fs in code if not fs and i not in used and c.source.strip()]
    if helpers:
        notices.append(
            f"{len(helpers)} answer cell(s) define none of the functions asked ({', '.join(asked)}): "
            "they run before the first answer cell"
        )
        first = next((c for c in mine if c.cell_type == "code"), None)
        if first is not None:
            first.source = "\n\n".join(helpers + [first.source])
    for cell in merged.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return Merge(merged, {c.id: c.source for c in mine}, notices)


def normalise(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


CHECKED_BY_GRADER = "# checked by the grader, in its own process"


def for_grading(merged):
    """The notebook the sandbox runs: the pristine check cells left out (the judge checks the
    functions in its own process, the grader the results files) and the grader's package not imported."""
    nb = nbformat.reads(nbformat.writes(merged), as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or ANSWER_TAGS & set(cell.metadata.get("tags", [])):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        drop = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "checkers":
                names.update(a.asname or a.name for a in node.names)
                drop.update(range(node.lineno, node.end_lineno + 1))
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "checkers" for a in node.names):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
                drop.update(range(node.lineno, node.end_lineno + 1))
        if drop:
            cell.source = "\n".join(ln for i, ln in enumerate(cell.source.splitlines(), 1) if i not in drop)
    for cell in nb.cells:
        if cell.cell_type == "code" and not ANSWER_TAGS & set(cell.metadata.get("tags", [])):
            try:
                used = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
            except SyntaxError:
                continue
            if used & names:
                cell.source = CHECKED_BY_GRADER
    return nb


def with_stubs(merged, pristine):
    """``merged`` with every answer code cell back to the pristine stub: the fallback run of a
    notebook that could not run to its end with the learner's cells."""
    nb = nbformat.reads(nbformat.writes(merged), as_version=4)
    stubs = {c.id: c.source for c in _answer_cells(pristine) if c.cell_type == "code"}
    for cell in _answer_cells(nb):
        if cell.cell_type == "code" and cell.id in stubs:
            cell.source = stubs[cell.id]
    return nb


def setup_cell(nb) -> str:
    """The notebook's set-up cell: its first code cell with imports that is not the parameters cell."""
    return next(
        (
            c.source
            for c in nb.cells
            if c.cell_type == "code" and "import" in c.source and "parameters" not in c.metadata.get("tags", [])
        ),
        "",
    )
