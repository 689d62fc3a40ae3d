"""The class's gradebook: rows, CSV and JSON, the rubric sheet and its merge, feedback pages,
shards joined into one.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from checkers.core.questions import QUESTIONS, RUBRIC_MAX, TRACKS, track_points
from checkers.core.report import Check, Report
from checkers.grading.flags import flag_copies
from checkers.grading.result import LearnerResult, _results_of, as_dict
from cptlab.core.files import write_atomic
from cptlab.core.results import STEP_NOTEBOOKS, write_json_atomic

RUBRIC_TEXT = {
    q.id: f"0-3 (x{q.weight:g}, {q.points} points): decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md)"
    for q in QUESTIONS.values()
    if q.kind == "written"
}
TRACK_COLUMN = {"core": "core", "go-further": "go_further"}


def graded(r: LearnerResult, q) -> bool:
    return q.track in r.graded_tracks


def gradebook_rows(results: list[LearnerResult], manual: dict[tuple[str, str], float] | None = None) -> list[dict]:
    """One row per learner: each question's points ("" where its track was not graded), each step's
    automatic points, and per track its automatic, written (rubric score x weight, once merged) and
    total points of its max; then the graded tracks together."""
    manual = manual or {}
    rows = []
    for r in results:
        row = {"learner": r.learner, "preset": r.preset, "seed": r.seed, "track": r.track, "execution": r.execution}
        for q in QUESTIONS.values():
            if not graded(r, q):
                row[f"q{q.id}"] = ""
            elif q.kind == "written":
                row[f"q{q.id}"] = round(manual[(r.learner, q.id)] * q.weight, 2) if (r.learner, q.id) in manual else ""
            else:
                row[f"q{q.id}"] = r.points.get(q.id, 0.0)
        for step in STEP_NOTEBOOKS:
            row[f"step{step}"] = round(
                sum(r.points.get(q.id, 0.0) for q in QUESTIONS.values() if q.step == step and q.kind != "written"), 2
            )
        totals = {"auto": 0.0, "written": None, "max": 0}
        for t in TRACKS:
            col = TRACK_COLUMN[t]
            if t not in r.graded_tracks:
                row.update({f"{col}_auto": "", f"{col}_written": "", f"{col}_total": "", f"{col}_max": ""})
                continue
            marks = [row[f"q{q.id}"] for q in QUESTIONS.values() if q.track == t and q.kind == "written"]
            written = round(sum(m for m in marks if m != ""), 2) if any(m != "" for m in marks) else ""
            auto = r.auto(t)
            row.update(
                {
                    f"{col}_auto": auto,
                    f"{col}_written": written,
                    f"{col}_total": round(auto + (written or 0), 2),
                    f"{col}_max": track_points(t),
                }
            )
            totals["auto"] += auto
            totals["max"] += track_points(t)
            if written != "":
                totals["written"] = (totals["written"] or 0) + written
        row["auto_total"] = round(totals["auto"], 2)
        row["written_total"] = round(totals["written"], 2) if totals["written"] is not None else ""
        row["total"] = round(totals["auto"] + (totals["written"] or 0), 2)
        row["max"] = totals["max"]
        row["flags"] = "; ".join(r.flags)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["learner"])
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


def rubric_rows(results: list[LearnerResult]) -> list[dict]:
    return [
        {
            "learner": r.learner,
            "question": q,
            "answer": r.answers.get(q, "").strip(),
            "rubric": RUBRIC_TEXT[q],
            "score": "",
        }
        for r in results
        for q in RUBRIC_TEXT
        if graded(r, QUESTIONS[q])
    ]


def _report_from(d: dict) -> Report:
    checks = [Check(**c) for c in d.get("checks", [])]
    return Report(
        d["step"],
        d["title"],
        d.get("run_dir", ""),
        d.get("preset"),
        checks,
        d.get("question"),
        d.get("status", ""),
        d.get("seed"),
    )


def _cause(r: LearnerResult, q) -> str:
    """Why a question lost points, in a few words: its first failed check, or its notebook's run."""
    rep = next((d for d in r.reports if d.get("question") == q.id), None)
    if rep is None:
        return ""
    failed = [c for c in rep.get("checks", []) if not c.get("passed")]
    if not failed:
        return ""
    first = failed[0]
    run = r.status.get(STEP_NOTEBOOKS[q.step], "")
    cause = f"{first['id']}: got {first['got']}"
    if q.kind == "results" and "re-run" in run:
        cause += f" (notebook: {run})"
    return cause


def feedback_page(r: LearnerResult, setting: str = "") -> str:
    """One page per learner, readable in any browser: points per question, the core's and Go
    further's apart, every check with its hint; ``setting``: where and under which limits it ran."""
    tables = ""
    for t in TRACKS:
        name = "Core" if t == "core" else "Go further"
        if t not in r.graded_tracks:
            tables += f"<h3>{name}</h3><p>Not graded this time: the class was graded on the core track.</p>"
            continue
        rows = "".join(
            f"<tr><td><a href='#q{html.escape(q.id)}'>{html.escape(q.id)}</a></td><td>{html.escape(q.title)}</td>"
            f"<td>{r.points.get(q.id, 0):g} / {q.points}</td><td>{html.escape(_cause(r, q))}</td></tr>"
            for q in QUESTIONS.values()
            if q.kind != "written" and q.track == t
        )
        tables += (
            f"<h3>{name}: {r.auto(t):g} / {track_points(t, 'auto')} automatic points</h3>"
            f"<p>and {track_points(t, 'written')} for the written answers, graded by your instructor.</p>"
            "<table><tr><th>question</th><th></th><th>points</th><th>why points were lost</th></tr>"
            f"{rows}</table>"
        )
    status = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(s)}</li>" for n, s in r.status.items())
    status += "".join(f"<li>{html.escape(n)}</li>" for n in r.notices)
    reports = "".join(
        f"<section id='q{html.escape(str(d.get('question')))}'>{_report_from(d)._repr_html_()}</section>"
        for d in r.reports
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cptlab feedback: {html.escape(r.learner)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{padding:2px 8px;text-align:left;vertical-align:top}}
section{{margin:1em 0}}</style></head><body>
<h1>Feedback for {html.escape(r.learner)}</h1>
<p>Preset <b>{html.escape(r.preset)}</b>, your seed <b>{r.seed}</b>, graded on the
<b>{"core" if r.track == "core" else "core and Go further"}</b>.</p>
{f"<p>Ran in: {html.escape(setting)}.</p>" if setting else ""}
<h2>Notebooks</h2><ul>{status}</ul>
<h2>Points</h2>{tables}
<h2>Every check</h2>{reports}</body></html>
"""


def write_gradebook(out: Path, preset: str, sandbox: str, results: list[LearnerResult]) -> list[dict]:
    rows = gradebook_rows(results)
    write_csv(out / "grades.csv", rows)
    write_csv(out / "rubric.csv", rubric_rows(results))
    write_json_atomic(
        out / "grades.json", {"preset": preset, "sandbox": sandbox, "learners": [as_dict(r) for r in results]}
    )
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    for r in results:
        (out / "feedback" / f"{r.learner}.html").write_text(feedback_page(r, sandbox), encoding="utf-8")
    return rows


def merge_shards(shard_dirs: list[Path], out: Path) -> list[dict]:
    """One gradebook from the shards' ``grades.json`` (the near-copy flags computed over the whole class)."""
    results, presets, sandbox = [], set(), ""
    for d in shard_dirs:
        data = json.loads((Path(d) / "grades.json").read_text())
        presets.add(data["preset"])
        sandbox = data.get("sandbox", "")
        results += _results_of(data)
    if len(presets) != 1:
        raise ValueError(
            f"the shards were graded with different presets ({sorted(presets)}): grade every shard with one --preset"
        )
    names = [r.learner for r in results]
    if len(set(names)) != len(names):
        raise ValueError("a learner appears in two shards: give every shard the same SUBMISSIONS and N, each its own K")
    results.sort(key=lambda r: r.learner)
    for r in results:
        r.flags = [f for f in r.flags if not f.startswith(("code ", "identical written"))]
    flag_copies(results)
    return write_gradebook(Path(out), presets.pop(), sandbox, results)


def merge_rubric(grades_dir: Path, rubric: Path | None = None) -> list[dict]:
    """Read the filled rubric sheet (scores 0-3, each times its question's weight) into the
    gradebook: ``grades_final.csv``."""
    grades_dir = Path(grades_dir)
    data = json.loads((grades_dir / "grades.json").read_text())
    manual: dict[tuple[str, str], float] = {}
    with open(rubric or grades_dir / "rubric.csv", newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            score = (row.get("score") or "").strip()
            if not score:
                continue
            try:
                value = float(score)
            except ValueError:
                raise ValueError(
                    f"rubric line {i}: score {score!r} for {row.get('learner')} {row.get('question')} is not a number "
                    "0-3"
                ) from None
            q = QUESTIONS.get(row.get("question", ""))
            if q is None or q.kind != "written" or not 0 <= value <= RUBRIC_MAX:
                raise ValueError(
                    f"rubric line {i}: {row.get('question')!r} takes a score from 0 to {RUBRIC_MAX}, got {score}"
                )
            manual[(row["learner"], q.id)] = value
    rows = gradebook_rows(_results_of(data), manual)
    write_csv(grades_dir / "grades_final.csv", rows)
    return rows
