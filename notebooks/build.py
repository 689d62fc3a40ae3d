"""Build the step notebooks from their sources (``make notebooks``).

Each ``src/NN_name.py`` (jupytext percent format) holds one notebook with the learner's parts
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's and otter-grader's markers;
text after ``BEGIN SOLUTION`` is the one-line hint the stub shows). Two versions come out, both
without outputs:

- ``NN_name.ipynb`` (student): each code solution becomes ``raise NotImplementedError("hint")``,
  each written answer (a markdown cell tagged ``answer``) becomes ``YOUR ANSWER HERE``;
- ``solutions/NN_name.ipynb``: the sources with the marker lines removed; ``make lab`` runs these.

``python notebooks/build.py --check`` exits 1 when a committed notebook differs from its source.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TEXT_STUB = "YOUR ANSWER HERE"


def _regions(lines: list[str]) -> list[tuple[int, int, str]]:
    """(begin, end, hint) line indices of each solution region."""
    out, start = [], None
    for i, line in enumerate(lines):
        if BEGIN in line:
            if start is not None:
                raise ValueError(f"nested {BEGIN} at line {i + 1}")
            start = i
        elif END in line:
            if start is None:
                raise ValueError(f"{END} without {BEGIN} at line {i + 1}")
            out.append((start, i, lines[start].split(BEGIN, 1)[1].strip()))
            start = None
    if start is not None:
        raise ValueError(f"{BEGIN} at line {start + 1} is never closed")
    return out


def _rewrite(source: str, markdown: bool, student: bool) -> str:
    lines = source.split("\n")
    for begin, end, hint in reversed(_regions(lines)):
        if not student:
            new = lines[begin + 1 : end]
        elif markdown:
            new = [TEXT_STUB]
        else:
            indent = re.match(r"\s*", lines[begin]).group(0)
            new = [f"{indent}raise NotImplementedError({(hint or 'write this part').__repr__()})"]
        lines[begin : end + 1] = new
    return "\n".join(lines)


def build(src: Path) -> dict[str, nbformat.NotebookNode]:
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    out = {}
    for version, student in (("student", True), ("solution", False)):
        book = copy.deepcopy(nb)
        for i, cell in enumerate(book.cells):
            cell.id = f"{src.stem.replace('_', '-')}-{i:02d}"
            has = bool(_regions(cell.source.split("\n")))
            tags = list(cell.metadata.get("tags", []))
            if has and cell.cell_type == "code" and "solution" not in tags:
                tags.append("solution")  # the grader takes these cells from a submission
            cell.metadata = {"tags": tags} if tags else {}
            cell.source = _rewrite(cell.source, cell.cell_type == "markdown", student)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        out[version] = book
    return out


def targets(src: Path, root: Path = HERE) -> dict[str, Path]:
    return {"student": root / f"{src.stem}.ipynb", "solution": root / "solutions" / f"{src.stem}.ipynb"}


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a committed notebook is out of date with its source")
    args = p.parse_args(argv)
    stale = []
    for src in sorted(SRC.glob("[0-9][0-9]_*.py")):
        books = build(src)
        for version, path in targets(src).items():
            text = render(books[version])
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path.relative_to(HERE.parent)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date with notebooks/src (run `make notebooks`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
