"""Grading a class: ``python -m checkers grade-class SUBMISSIONS --preset tiny --out GRADES``.

SUBMISSIONS holds one folder per learner (its name is the learner id) with the learner's step
notebooks. For each learner, only the answer cells (tagged ``solution`` or ``answer``) are taken
from the submitted notebooks and put into pristine copies of the instructor's notebooks, so edits
to check cells, the parameters cell or library calls change nothing. The merged notebooks run
headless in a fresh run folder with the instructor's preset and the learner's own seed, one
notebook at a time under a wall-clock limit, in a bubblewrap sandbox where one is installed
(read-only file system but the run folder, no network, its own process tree). Points come from
the pristine check cells' outputs and from the grader's own checks of the results files. A
failing or hanging submission never stops the class: its row says why.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from cptlab.cache import cache_root
from cptlab.config import get_config
from cptlab.measure import resolve_base_model
from cptlab.notebooks import NOTEBOOK_DIR
from cptlab.results import STEP_NOTEBOOKS, write_json_atomic
from cptlab.wiki_sample import data_dir

from .questions import AUTO_POINTS, MANUAL_POINTS, QUESTIONS, RESULTS_QUESTION
from .report import MIME, Check, Report
from .steps import CHECKS

MAX_NOTEBOOK_BYTES = 20 << 20  # a submitted notebook is JSON text; anything larger is refused unread
ANSWER_TAGS = {"solution", "answer"}
RUBRIC_TEXT = {
    "W1": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W1)",
    "W2": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W2)",
    "W3": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W3)",
    "W4": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W4)",
}


def learner_seed(learner_id: str) -> int:
    """The learner's seed, derived from the learner id: the same every time the class is graded,
    different between learners (so a copied run folder cannot pass for an honest one)."""
    return int.from_bytes(hashlib.sha256(f"cptlab-learner:{learner_id}".encode()).digest()[:4], "big") % (2**31 - 1)


# ----------------------------------------------------------------------------- answer cells
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


def merge_answers(pristine, submitted) -> tuple[object, dict[str, str]]:
    """The pristine notebook with its answer cells' sources taken from the submission: matched by
    cell id, else by position among the answer cells. Returns the merged notebook and the
    answer sources by pristine cell id."""
    merged = nbformat.reads(nbformat.writes(pristine), as_version=4)
    theirs = _answer_cells(submitted)
    by_id = {c.get("id"): c for c in theirs if c.get("id")}
    answers = {}
    for i, cell in enumerate(_answer_cells(merged)):
        src = by_id.get(cell.get("id"))
        if src is None and i < len(theirs):
            src = theirs[i]
        if src is not None and src.cell_type == cell.cell_type:
            cell.source = src.source
        answers[cell.id] = cell.source
    for cell in merged.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return merged, answers


def normalise(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


# ----------------------------------------------------------------------------- execution
@dataclass
class Sandbox:
    """How a learner's notebook is run: ``bwrap`` when installed, else a plain subprocess."""

    bwrap: str | None = shutil.which("bwrap")

    def wrap(self, cmd: list[str], run_dir: Path, shared: Path) -> list[str]:
        """``run_dir`` writable, everything else read-only (``shared``, the cache with the base model
        and data, included; the lab's own files may live under /tmp, so /tmp stays visible)."""
        if not self.bwrap:
            return cmd
        return [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--ro-bind", str(shared), str(shared), "--bind", str(run_dir), str(run_dir),
                "--unshare-net", "--unshare-pid", "--die-with-parent", "--chdir", str(run_dir), *cmd]

    @property
    def name(self) -> str:
        return "bwrap (read-only but the run folder, no network)" if self.bwrap else "none (bubblewrap not installed)"


def learner_env(run_dir: Path, cache: Path, threads: int) -> dict[str, str]:
    """A learner's process sees its run folder as home, temp and cache; the shared base model and
    data are linked in, read-only inside the sandbox."""
    home = run_dir / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    own_cache = run_dir / "cache"
    own_cache.mkdir(exist_ok=True)
    for shared in cache.glob("tiny-*"):
        link = own_cache / shared.name
        if not link.exists():
            link.symlink_to(shared)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "HF_HOME", "HF_HUB_CACHE",
                                                         "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return {**keep, "HOME": str(home), "TMPDIR": str(home / "tmp"), "CPTLAB_CACHE": str(own_cache),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
            "MPLCONFIGDIR": str(home / "mpl"), "CPTLAB_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
            "PYTHONDONTWRITEBYTECODE": "1"}


def execute(src: Path, dst: Path, params: dict, run_dir: Path, env: dict, timeout: float, sandbox: Sandbox, shared: Path) -> str:
    """Run one merged notebook; return ``ok``, ``time-out after N s`` or ``error: <first line>``."""
    cmd = sandbox.wrap([sys.executable, "-m", "checkers.run_notebook", str(src), str(dst), json.dumps(params)], run_dir, shared)
    proc = subprocess.Popen(cmd, env=env, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"time-out after {timeout:g} s"
    if proc.returncode == 0:
        return "ok"
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.startswith("error: ")]
    if lines:
        return lines[-1]
    last = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return f"error: exit status {proc.returncode}" + (f" ({last[-1][:160]})" if last else "")


# ----------------------------------------------------------------------------- scoring
def check_cell_reports(executed: Path, pristine) -> dict[str, dict]:
    """Reports shown by the pristine check cells only (a learner's own cell cannot print points)."""
    check_ids = {c.id: c.source for c in pristine.cells if c.cell_type == "code" and not ANSWER_TAGS & set(c.metadata.get("tags", []))}
    out = {}
    for cell in nbformat.read(executed, as_version=4).cells:
        if cell.get("id") not in check_ids or cell.source != check_ids[cell.get("id")]:
            continue
        for o in cell.get("outputs", []):
            rep = o.get("data", {}).get(MIME)
            if isinstance(rep, dict) and QUESTIONS.get(rep.get("question"), None) and QUESTIONS[rep["question"]].kind == "code":
                out[rep["question"]] = rep
    return out


@dataclass
class LearnerResult:
    learner: str
    seed: int
    preset: str
    status: dict[str, str] = field(default_factory=dict)  # notebook -> ok / missing / time-out / error
    points: dict[str, float] = field(default_factory=dict)  # question -> points
    reports: list[dict] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # W1.. -> text
    code: str = ""  # the learner's code cells, normalised (for the copy flag)
    flags: list[str] = field(default_factory=list)

    @property
    def auto_total(self) -> float:
        return round(sum(self.points.values()), 2)

    @property
    def execution(self) -> str:
        bad = [f"{n[:2]}: {s}" for n, s in self.status.items() if s != "ok"]
        return "ok" if not bad else "; ".join(bad)


def grade_learner(folder: Path, preset: str, out: Path, timeout: float, threads: int, sandbox: Sandbox,
                  cache: Path) -> LearnerResult:
    learner = folder.name
    res = LearnerResult(learner, learner_seed(learner), preset)
    run_dir = (out / "runs" / learner).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "merged").mkdir(parents=True)
    env = learner_env(run_dir, cache, threads)
    params = {"PRESET": preset, "RUN_DIR": str(run_dir), "SEED": res.seed, "OVERRIDES": {}}
    codes, reports = [], {}
    for step, name in STEP_NOTEBOOKS.items():
        pristine = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        try:
            submitted = read_submission(folder / name)
        except FileNotFoundError:
            res.status[name] = "missing"
            continue
        except (ValueError, OSError, UnicodeDecodeError, nbformat.reader.NotJSONError) as exc:
            res.status[name] = f"error: unreadable notebook ({str(exc).splitlines()[0][:120]})"
            continue
        merged, answers = merge_answers(pristine, submitted)
        for cell in _answer_cells(merged):
            tags = set(cell.metadata.get("tags", []))
            if cell.cell_type == "code":
                codes.append(normalise(cell.source))
            for qid in tags & set(QUESTIONS):
                res.answers[qid] = cell.source
        src = run_dir / "merged" / name
        nbformat.write(merged, src)
        res.status[name] = execute(src, run_dir / name, params, run_dir, env, timeout, sandbox, cache)
        if (run_dir / name).is_file():
            try:
                reports.update(check_cell_reports(run_dir / name, pristine))
            except (ValueError, OSError, nbformat.reader.NotJSONError):
                pass
    res.code = "\n".join(codes)
    for q in QUESTIONS.values():
        if q.kind == "code":
            rep = reports.get(q.id)
            res.points[q.id] = float(rep["points"]) if rep else 0.0
            if rep:
                res.reports.append(rep)
    for step, check in CHECKS.items():  # the results files, checked by the grader itself
        report = check(run_dir, preset)
        res.points[RESULTS_QUESTION[step]] = report.points
        res.reports.append(report.to_dict())
    s1 = run_dir / "step1_baseline.json"
    if s1.is_file():
        try:
            d = json.loads(s1.read_text())
            if d.get("preset") != preset or d.get("seed") != res.seed:
                res.flags.append(f"results made with preset {d.get('preset')} / seed {d.get('seed')}, graded for {preset} / {res.seed}")
        except (ValueError, OSError):
            pass
    return res


def flag_copies(results: list[LearnerResult]) -> None:
    """Identical learner code or written answers (after whitespace normalisation): a flag, not a verdict."""
    for what, key in (("code", lambda r: r.code), ("written answers", lambda r: normalise(" ".join(r.answers[k] for k in sorted(r.answers))))):
        groups: dict[str, list[str]] = {}
        for r in results:
            text = key(r)
            if text and "YOUR ANSWER HERE" not in text and "NotImplementedError" not in text:
                groups.setdefault(hashlib.sha256(text.encode()).hexdigest(), []).append(r.learner)
        for names in groups.values():
            if len(names) > 1:
                for r in results:
                    if r.learner in names:
                        r.flags.append(f"identical {what} to {', '.join(n for n in names if n != r.learner)}")


# ----------------------------------------------------------------------------- outputs
def gradebook_rows(results: list[LearnerResult], manual: dict[tuple[str, str], float] | None = None) -> list[dict]:
    rows = []
    for r in results:
        row = {"learner": r.learner, "preset": r.preset, "seed": r.seed, "execution": r.execution}
        for q in QUESTIONS.values():
            row[f"q{q.id}"] = (manual or {}).get((r.learner, q.id), "") if q.kind == "written" else r.points.get(q.id, 0.0)
        for step in STEP_NOTEBOOKS:
            row[f"step{step}"] = round(sum(r.points.get(q.id, 0.0) for q in QUESTIONS.values() if q.step == step and q.kind != "written"), 2)
        written = [(manual or {}).get((r.learner, q)) for q in RUBRIC_TEXT]
        row["auto_total"] = r.auto_total
        row["written_total"] = sum(w for w in written if w is not None) if any(w is not None for w in written) else ""
        row["total"] = round(r.auto_total + (row["written_total"] or 0), 2)
        row["max"] = AUTO_POINTS + MANUAL_POINTS
        row["flags"] = "; ".join(r.flags)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["learner"])
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def rubric_rows(results: list[LearnerResult]) -> list[dict]:
    return [{"learner": r.learner, "question": q, "answer": r.answers.get(q, "").strip(), "rubric": RUBRIC_TEXT[q], "score": ""}
            for r in results for q in RUBRIC_TEXT]


def _report_from(d: dict) -> Report:
    checks = [Check(**c) for c in d.get("checks", [])]
    return Report(d["step"], d["title"], d.get("run_dir", ""), d.get("preset"), checks, d.get("question"), d.get("status", ""))


def feedback_page(r: LearnerResult) -> str:
    """One page per learner, readable in any browser: points per question, every check with its hint."""
    rows = "".join(
        f"<tr><td>{html.escape(q.id)}</td><td>{html.escape(q.title)}</td><td>{r.points.get(q.id, 0):g} / {q.points}</td></tr>"
        for q in QUESTIONS.values() if q.kind != "written")
    status = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(s)}</li>" for n, s in r.status.items())
    reports = "".join(f"<section>{_report_from(d)._repr_html_()}</section>" for d in r.reports)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cptlab feedback: {html.escape(r.learner)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;text-align:left;vertical-align:top}}
section{{margin:1em 0}}</style></head><body>
<h1>Feedback for {html.escape(r.learner)}</h1>
<p>Preset <b>{html.escape(r.preset)}</b>, your seed <b>{r.seed}</b>. Automatic points: <b>{r.auto_total:g} / {AUTO_POINTS}</b>;
the written answers ({MANUAL_POINTS} points) are graded by your instructor.</p>
<h2>Notebooks</h2><ul>{status}</ul>
<h2>Points</h2><table><tr><th>question</th><th></th><th>points</th></tr>{rows}</table>
<h2>Every check</h2>{reports}</body></html>
"""


def grade_class(submissions: Path, preset: str, out: Path, jobs: int = 1, timeout: float = 900.0) -> list[LearnerResult]:
    submissions, out = Path(submissions), Path(out)
    folders = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{submissions} holds no learner folders: one folder per learner, named by the learner id")
    cfg = get_config(preset)
    resolve_base_model(cfg, progress=False)  # built once here, shared read-only with every learner
    if cfg.base_model is None:
        data_dir()
    sandbox, threads, cache = Sandbox(), max(1, (os.cpu_count() or 1) // max(1, jobs)), cache_root().resolve()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda f: grade_learner(f, preset, out, timeout, threads, sandbox, cache), folders))
    flag_copies(results)
    write_csv(out / "grades.csv", gradebook_rows(results))
    write_csv(out / "rubric.csv", rubric_rows(results))
    write_json_atomic(out / "grades.json", {"preset": preset, "sandbox": sandbox.name, "learners": [
        {"learner": r.learner, "seed": r.seed, "status": r.status, "points": r.points, "flags": r.flags, "reports": r.reports}
        for r in results]})
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    for r in results:
        (out / "feedback" / f"{r.learner}.html").write_text(feedback_page(r), encoding="utf-8")
    return results


def merge_rubric(grades_dir: Path, rubric: Path | None = None) -> list[dict]:
    """Read the filled rubric sheet (scores 0-3) into the gradebook: ``grades_final.csv``."""
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
                raise ValueError(f"rubric line {i}: score {score!r} for {row.get('learner')} {row.get('question')} is not a number 0-3") from None
            q = QUESTIONS.get(row.get("question", ""))
            if q is None or q.kind != "written" or not 0 <= value <= q.points:
                raise ValueError(f"rubric line {i}: {row.get('question')!r} takes a score from 0 to 3, got {score}")
            manual[(row["learner"], q.id)] = value
    results = []
    for d in data["learners"]:
        r = LearnerResult(d["learner"], d["seed"], data["preset"], d["status"], d["points"], d["reports"], flags=d["flags"])
        results.append(r)
    rows = gradebook_rows(results, manual)
    write_csv(grades_dir / "grades_final.csv", rows)
    return rows


