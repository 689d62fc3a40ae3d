"""Points from executed notebooks: every check cell's report travels in its output as JSON
(``Report._repr_mimebundle_``); the last report of each question counts. Written answers are
listed for the instructor's rubric, never scored here."""

from __future__ import annotations

import json
from pathlib import Path

from checkers.core.questions import GRADED_TRACKS, QUESTIONS, TRACKS, track_points
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
    """Per question: points, max, track and status, from the four executed notebooks in ``folder``;
    per track: the automatic points and their max, and the written points the instructor grades."""
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
            "track": q.track,
            "max": q.points,
            "points": float(rep["points"]) if rep else 0.0,
            "status": (rep.get("status") or ("passed" if rep["passed"] else "failed")) if rep else "not run",
            "failed": [c["id"] for c in rep["checks"] if not c["passed"]] if rep else [],
        }
    tracks = {
        t: {
            "total": round(sum(r["points"] for r in rows.values() if r["track"] == t), 2),
            "max": track_points(t, "auto"),
            "written_max": track_points(t, "written"),
        }
        for t in TRACKS
    }
    return {"questions": rows, "tracks": tracks}


def complete(scores: dict, track: str = "full") -> bool:
    """Whether every automatic point of the graded tracks was earned."""
    return all(scores["tracks"][t]["total"] == scores["tracks"][t]["max"] for t in GRADED_TRACKS[track])


def format_scores(scores: dict, track: str = "full") -> str:
    """The points table, the core first, then Go further (or one line saying the core run left it out)."""
    lines = [f"{'question':<44}{'points':>12}  status"]
    for t in TRACKS:
        tot = scores["tracks"][t]
        name = "core" if t == "core" else "Go further"
        if t not in GRADED_TRACKS[track]:
            lines.append(f"{name}: left out of this core-track run ({tot['max']} automatic points, optional)")
            continue
        for qid, r in scores["questions"].items():
            if r["track"] != t:
                continue
            lines.append(
                f"{qid + ' ' + r['title']:<44}{r['points']:>6g}/{r['max']:<5g}  {r['status']}"
                + (f" ({', '.join(r['failed'])})" if r["failed"] and r["status"] == "failed" else "")
            )
        lines.append(
            f"{name + ': automatic points':<44}{tot['total']:>6g}/{tot['max']:<5g}  "
            f"(+ {tot['written_max']} for the written answers, graded with notebooks/RUBRIC.md)"
        )
    return "\n".join(lines)
