"""Which handed-in notebook is which step, whatever its file name or folder: a learner uploads to a
course platform what their machine called the files (``lab-part1 (2).ipynb``, a folder inside a
zip). A notebook is the step whose learner functions and written questions its cells define, its
"Step N" heading and its name breaking ties; each step takes its best notebook, each notebook one step."""

from __future__ import annotations

import re
from pathlib import Path

from checkers.core.questions import QUESTIONS
from checkers.grading.submissions import defined_functions, read_submission
from cptlab.core.results import STEP_NOTEBOOKS

MAX_FILES = 200  # a submission folder is a handful of notebooks; a larger one is not searched past this


def _candidates(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__MACOSX" for part in rel.parts):  # checkpoints, archive litter
            continue
        if path.is_symlink() or not path.is_file():
            continue
        found.append(path)
        if len(found) >= MAX_FILES:
            break
    return found


def step_scores(path: Path) -> dict[int, float]:
    """How strongly ``path`` looks like each step's notebook (0 for an unreadable one)."""
    try:
        nb = read_submission(path)
    except Exception:  # noqa: BLE001 - not a notebook (bad JSON, too large, a FIFO): no step
        return {}
    functions = {f for c in nb.cells if c.cell_type == "code" for f in defined_functions(c.source)}
    tags = {t for c in nb.cells for t in c.get("metadata", {}).get("tags", [])}
    heading = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    scores = {}
    for step, name in STEP_NOTEBOOKS.items():
        mine = [q for q in QUESTIONS.values() if q.step == step]
        score = 2.0 * len(functions & {f for q in mine for f in q.functions})
        score += 2.0 * len(tags & {q.id for q in mine if q.kind == "written"})
        score += 1.5 if re.search(rf"\bstep\s*{step}\b", heading, re.I) else 0.0
        score += 1.0 if path.name == name else 0.5 if re.search(rf"(^|\D)0?{step}(\D|$)", path.stem) else 0.0
        if score:
            scores[step] = score
    return scores


def find_notebooks(root: Path) -> tuple[dict[int, Path], list[str]]:
    """Each step's notebook under ``root`` (at any depth), and notes on what was left aside."""
    candidates = _candidates(Path(root))
    scored = [(s, step, path) for path in candidates for step, s in step_scores(path).items()]
    chosen: dict[int, Path] = {}
    used: set[Path] = set()
    for _, step, path in sorted(scored, key=lambda t: (-t[0], t[1], str(t[2]))):
        if step not in chosen and path not in used:
            chosen[step] = path
            used.add(path)
    notes = [
        f"{p.relative_to(root)}: not recognised as one of the lab's notebooks, or a second copy of a step"
        for p in candidates
        if p not in used
    ]
    return dict(sorted(chosen.items())), notes
