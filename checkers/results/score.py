"""Points from executed notebooks: every check cell's report travels in its output as JSON
(``Report._repr_mimebundle_``); the last report of each question counts. Written answers are
listed for the instructor's rubric, never scored here."""

from __future__ import annotations

import json
from pathlib import Path

from checkers.core.questions import AUTO_POINTS, QUESTIONS
from checkers.core.report import MIME
from cptlab.core.results import STEP_NOTEBOOKS


def reports_in(notebook: Path) -> dict[str, dict]:
    """question id -> the last check report shown in the notebook's outputs."""
    nb = json.loads(Path(notebook).read_text())
    out: dict[str, dict] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            rep = o.get("data", {}).get(MIME)
            if isinstance(rep, dict) and rep.get("question") in QUESTIONS:
                out[rep["question"]] = rep
    return out


def answers_in(notebook: Path) -> dict[str, str]:
    """written-answer id (W1..W5) -> the text of its tagged markdown cell."""
    nb = json.loads(Path(notebook).read_text())
    out = {}
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "markdown" and "answer" in tags:
            qid = next((t for t in tags if t in QUESTIONS), None)
            if qid:
                src = cell.get("source", "")
                out[qid] = "".join(src) if isinstance(src, list) else src
    return out


def score_notebooks(folder: str | Path) -> dict:
    """Per question: points, max and status, from the four executed notebooks in ``folder``."""
    folder = Path(folder)
    reports: dict[str, dict] = {}
    for name in STEP_NOTEBOOKS.values():
        if (folder / name).is_file():
            reports.update(reports_in(folder / name))
    rows = {}
    for q in QUESTIONS.values():
        if q.kind == "written":
            continue
        rep = reports.get(q.id)
        rows[q.id] = {
            "title": q.title,
            "step": q.step,
            "max": q.points,
            "points": float(rep["points"]) if rep else 0.0,
            "status": (rep.get("status") or ("passed" if rep["passed"] else "failed")) if rep else "not run",
            "failed": [c["id"] for c in rep["checks"] if not c["passed"]] if rep else [],
        }
    total = round(sum(r["points"] for r in rows.values()), 2)
    return {"questions": rows, "total": total, "max": AUTO_POINTS, "written_max": 100 - AUTO_POINTS}


def format_scores(scores: dict) -> str:
    lines = [f"{'question':<44}{'points':>12}  status"]
    for qid, r in scores["questions"].items():
        lines.append(
            f"{qid + ' ' + r['title']:<44}{r['points']:>6g}/{r['max']:<5g}  {r['status']}"
            + (f" ({', '.join(r['failed'])})" if r["failed"] and r["status"] == "failed" else "")
        )
    lines.append(
        f"{'automatic points':<44}{scores['total']:>6g}/{scores['max']:<5g}  "
        f"(+ {scores['written_max']} for the written answers, graded with notebooks/RUBRIC.md)"
    )
    return "\n".join(lines)
