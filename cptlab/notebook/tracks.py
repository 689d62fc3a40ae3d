"""The lab's two tracks in the same four notebooks: the core, and the optional *Go further* sections
(every cell of them tagged ``go-further``).

A core run leaves out Go further's checks and long runs (the speed table, two processes, the
recipe's experiments, the LoRA sweep); Go further's function definitions stay, so the core cells
that call them (the corpus calls ``split_documents``, the study ``interpolate``) find them, and run
on the lab's reference where they are still stubs.
"""

from __future__ import annotations

import ast

import nbformat

GO_FURTHER = "go-further"
RUN_TRACKS = ("core", "full")  # what a run executes: the core's cells, or every cell
LEFT_OUT = "# Go further: left out of a core-track run (the lab runs on its reference where it needs this part)"


def is_go_further(cell) -> bool:
    return GO_FURTHER in cell.get("metadata", {}).get("tags", [])


def defines_function(source: str) -> bool:
    """Whether a cell defines a function at its top level (what a later core cell may call)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in tree.body)


def for_track(nb, track: str):
    """A copy of ``nb`` for a ``track`` run: ``full`` as it is; ``core`` with every Go further code
    cell that defines no function left out (its source a one-line comment, no outputs)."""
    if track not in RUN_TRACKS:
        raise ValueError(f"track must be one of {', '.join(RUN_TRACKS)}, got {track!r}")
    out = nbformat.reads(nbformat.writes(nb), as_version=4)
    if track == "full":
        return out
    for cell in out.cells:
        if cell.cell_type == "code" and is_go_further(cell) and not defines_function(cell.source):
            cell.source = LEFT_OUT
            cell.outputs = []
    return out
