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

import ast
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

from checkers.core.questions import AUTO_POINTS, MANUAL_POINTS, QUESTIONS, RESULTS_QUESTION
from checkers.core.report import Check, Report
from checkers.grading.judge import Limits, cap_process, judge_question, setup_imports
from checkers.results.steps import CHECKS, not_yours
from cptlab.core.cache import cache_root
from cptlab.core.config import get_config
from cptlab.core.files import write_atomic
from cptlab.core.results import STEP_NOTEBOOKS, write_json_atomic
from cptlab.data.wiki_sample import data_dir
from cptlab.model.measure import resolve_base_model
from cptlab.notebook.execute import NOTEBOOK_DIR

MAX_NOTEBOOK_BYTES = 20 << 20  # a submitted notebook is JSON text; anything larger is refused unread
ANSWER_TAGS = {"solution", "answer"}
RUBRIC_TEXT = {
    "W1": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W1)",
    "W2": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W2)",
    "W3": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W3)",
    "W4": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W4)",
    "W5": "0-3: decision, own numbers, mechanism, caveat (notebooks/RUBRIC.md, W5)",
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


# ----------------------------------------------------------------------------- execution
REPO = Path(__file__).resolve().parents[2]
HIDDEN = (REPO / "notebooks" / "solutions", REPO / "notebooks" / "src", REPO / "checkers")


@dataclass
class Sandbox:
    """How learner code runs: ``bwrap`` when installed (else a plain subprocess), always under the
    memory cap and with its own process group."""

    bwrap: str | None = shutil.which("bwrap")

    def wrap(self, cmd: list[str], run_dir: Path, shared: Path, hide: tuple[Path, ...] = ()) -> list[str]:
        """``run_dir`` writable, everything else read-only (``shared``, the cache with the base model
        and data, included; the lab's own files may live under /tmp, so /tmp stays visible); the
        solutions, the notebook sources, the grader's package and ``hide`` (the class's folders)
        replaced by empty folders."""
        if not self.bwrap:
            return cmd
        masks = []
        for path in (*HIDDEN, *hide):
            if path.exists():
                masks += ["--tmpfs", str(path)]
        caps = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []  # root outside is no one special inside
        return [
            self.bwrap,
            *caps,
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            *masks,
            "--ro-bind",
            str(shared),
            str(shared),
            "--bind",
            str(run_dir),
            str(run_dir),
            "--unshare-net",
            "--unshare-pid",
            "--die-with-parent",
            "--chdir",
            str(run_dir),
            *cmd,
        ]

    @property
    def name(self) -> str:
        return (
            "bwrap (read-only but the run folder, no network, solutions and grader hidden)"
            if self.bwrap
            else "none (bubblewrap not installed)"
        )


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
    keep = {
        k: v
        for k, v in os.environ.items()
        if k
        in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "HF_HOME", "HF_HUB_CACHE", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    return {
        **keep,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "CPTLAB_CACHE": str(own_cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "CPTLAB_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def execute(
    src: Path,
    dst: Path,
    params: dict,
    run_dir: Path,
    env: dict,
    timeout: float,
    sandbox: Sandbox,
    shared: Path,
    hide: tuple[Path, ...] = (),
    memory_bytes: int = 16 << 30,
) -> str | None:
    """Run one merged notebook; None when it ran to its end, else why not (time-out or error)."""
    cmd = sandbox.wrap(
        [sys.executable, "-m", "cptlab.notebook.execute", str(src), str(dst), json.dumps(params)], run_dir, shared, hide
    )
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=cap_process(memory_bytes),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"time-out after {timeout:g} s"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.startswith("error: ")]
    if lines:
        return lines[-1]
    last = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return f"error: exit status {proc.returncode}" + (f" ({last[-1][:160]})" if last else "")


def describe_run(executed: Path, why: str | None, learner_names: set[str]) -> str:
    """What a notebook run did, plainly: ran to the end (and which steps did not run), stopped at
    cell N with the reason, or timed out in a named function."""
    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError, nbformat.reader.NotJSONError):
        cells = []
    code = [c for c in cells if c.cell_type == "code"]
    texts = ["".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream") for c in code]
    not_run = sum("[not run yet]" in t for t in texts)
    if why is None:
        return "ran to the end" + (f"; {not_run} step(s) not run (a function still a stub)" if not_run else "")
    if why.startswith("time-out"):
        running = next(
            (i for i, c in enumerate(code) if c.get("metadata", {}).get("papermill", {}).get("status") == "running"),
            None,
        )
        if running is None:
            running = next((i for i, c in enumerate(code) if c.get("execution_count") is None), None)
        if running is not None:
            src = code[running].source
            used = sorted(n for n in learner_names if re.search(rf"\b{n}\b", src))
            where = (
                f"in {', '.join(used)}"
                if used
                else "in an answer cell"
                if ANSWER_TAGS & set(code[running].metadata.get("tags", []))
                else "in the lab"
            )
            return f"timed out {where} (code cell {running + 1}, {why})"
        return f"timed out ({why})"
    failing = next(
        (i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))), None
    )
    reason = why[len("error: ") :] if why.startswith("error: ") else why
    return f"stopped at code cell {failing + 1}: {reason}" if failing is not None else f"stopped: {reason}"


# ----------------------------------------------------------------------------- scoring
@dataclass
class LearnerResult:
    learner: str
    seed: int
    preset: str
    status: dict[str, str] = field(default_factory=dict)  # notebook -> what its run did, plainly
    points: dict[str, float] = field(default_factory=dict)  # question -> points
    reports: list[dict] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # W1.. -> text
    code: str = ""  # the learner's answer code cells (for the near-copy flag)
    flags: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # matching notes, functions run on the reference

    @property
    def auto_total(self) -> float:
        return round(sum(self.points.values()), 2)

    @property
    def execution(self) -> str:
        return "; ".join(f"{n[:2]}: {s}" for n, s in self.status.items())


REFERENCE_NAMES = {  # the library's references of the functions a learner writes, by the names it exports them
    "perplexity",
    "learner_perplexity",
    "split_streams",
    "split_documents",
    "pack",
    "to_blocks",
    "lr_multiplier",
    "Schedule",
    "ReferenceStep",
    "cpt_loop",
    "code_ppl_drop",
    "forgetting_ratio",
    "recommend",
    "_scenario_answers",
    "build_corpus",
    "replay_counts",
    "lora_model",
    "load_interpolated",
}


def reaches_reference(source: str) -> list[str]:
    """What an answer cell reaches that it should not: the grader's package, the library's reference
    of a function the learner writes, or a dynamic import (read from the syntax tree; a flag, not a verdict)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for m in mods:
                if m.split(".")[0] in ("checkers", "cptlab", "importlib"):
                    names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                    if m.split(".")[0] != "cptlab" or set(names) & REFERENCE_NAMES or not names or m != "cptlab":
                        found.append(f"imports {m}" + (f" ({', '.join(names)})" if names else ""))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "getattr", "eval", "exec")
        ):
            if node.func.id != "getattr" or any(
                isinstance(a, ast.Constant) and a.value in REFERENCE_NAMES for a in node.args
            ):
                found.append(f"calls {node.func.id}")
        elif isinstance(node, ast.Attribute) and node.attr in REFERENCE_NAMES | {"checkers", "exercises"}:
            found.append(f"uses .{node.attr}")
    return sorted(set(found))


def _judge_env(env: dict) -> dict:
    return {**env, "OMP_NUM_THREADS": "1", "CPTLAB_THREADS": "1"}


def grade_learner(
    folder: Path,
    preset: str,
    out: Path,
    timeout: float,
    threads: int,
    sandbox: Sandbox,
    cache: Path,
    limits: Limits = Limits(),
    hide: tuple[Path, ...] = (),
    notebook_memory: int = 16 << 30,
) -> LearnerResult:
    learner = folder.name
    res = LearnerResult(learner, learner_seed(learner), preset)
    run_dir = (out / "runs" / learner).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "merged").mkdir(parents=True)
    env = learner_env(run_dir, cache, threads)
    params = {"PRESET": preset, "RUN_DIR": str(run_dir), "SEED": res.seed, "OVERRIDES": {}}
    wrap = lambda cmd: sandbox.wrap(cmd, run_dir, cache, hide)  # noqa: E731
    prelude = "\n".join(f"{k} = {v!r}" for k, v in params.items())  # the parameters cell, as the notebook run gets it
    codes, reports, results_reports, missing, merges = [], {}, {}, set(), {}
    for step, name in STEP_NOTEBOOKS.items():
        pristine = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        questions = [q for q in QUESTIONS.values() if q.step == step and q.kind == "code"]
        names = {f for q in questions for f in q.functions}
        try:
            submitted = read_submission(folder / name)
        except FileNotFoundError:
            submitted, why = None, "missing"
        except (ValueError, OSError, UnicodeDecodeError, nbformat.reader.NotJSONError) as exc:
            submitted, why = None, f"unreadable notebook ({str(exc).splitlines()[0][:120]})"
        if submitted is None:
            merge = Merge(pristine, {})
            missing.add(step)
        else:
            merge = merge_answers(pristine, submitted)
        res.notices += [f"{name[:2]}: {n}" for n in merge.notices]
        cells = [c.source for c in _answer_cells(merge.notebook) if c.cell_type == "code"]
        for cell in _answer_cells(merge.notebook):
            tags = set(cell.metadata.get("tags", []))
            if cell.cell_type == "code" and submitted is not None:
                codes.append(cell.source)
                for what in reaches_reference(cell.source):
                    fns = ", ".join(defined_functions(cell.source)) or "an answer cell"
                    res.flags.append(f"{name[:2]} {fns}: {what}")
            for qid in tags & set(QUESTIONS):
                if submitted is not None:
                    res.answers[qid] = cell.source
        setup = setup_cell(pristine)
        merges[step] = (merge, setup, cells)
        for q in questions:  # the judge, one sandboxed process per question (4.6 also needs step 4's study: below)
            if q.id == "4.6":
                continue
            if submitted is None:
                reports[q.id] = _missing_report(q, name, why)
            else:
                reports[q.id] = judge_question(
                    q.id, [prelude, setup_imports(setup), *cells], wrap, _judge_env(env), run_dir, limits
                )
        failed = [q for q in questions if q.id in reports and not reports[q.id].passed]
        cannot = {f for q in failed if cannot_run(reports[q.id]) for f in q.functions}  # raised, hung, a stub
        wrong = {f for q in failed for f in q.functions} - cannot  # returned values, the wrong ones
        if submitted is None:
            cannot = set(names)
        src = run_dir / "merged" / name

        def run(nb, reference: set[str]) -> str | None:
            nbformat.write(for_grading(nb), src)
            env_nb = {**env, "CPTLAB_USE_REFERENCE": ",".join(sorted(reference))}
            return execute(src, run_dir / name, params, run_dir, env_nb, timeout, sandbox, cache, hide, notebook_memory)

        # 1. the step as the learner wrote it; what cannot run at all runs on the lab's reference
        why_not = run(merge.notebook, cannot)
        status = (
            describe_run(run_dir / name, why_not, names)
            if submitted is not None
            else f"{why}; run on the lab's reference so the next steps count"
        )
        if cannot and submitted is not None:
            status += f"; ran with the lab's reference for {', '.join(sorted(cannot))} (raised, hung or not written)"
        if why_not is not None:  # 2. it stopped: again, every function of it on the reference
            (run_dir / "executed-with-your-cells").mkdir(exist_ok=True)
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, run_dir / "executed-with-your-cells" / name)
            again = run(with_stubs(merge.notebook, pristine), set(names))
            status += "; re-run on the lab's reference so its results and the next steps count: " + (
                "ran to the end" if again is None else describe_run(run_dir / name, again, names)
            )
        # the step's results, graded on the run its code produced
        report = CHECKS[step](run_dir, preset)
        if step in missing:
            not_yours(report, f"{name} was not handed in: the lab ran the step on its reference")
        elif (runs := [q for q in questions if q.runs_the_step and q.id in reports]) and all(
            reports[q.id].status == "not implemented yet" for q in runs
        ):
            not_yours(report, "every function of this step is still a stub: the lab ran the step on its reference")
        results_reports[step] = report
        if why_not is None and wrong and step < 4:  # 3. the next steps count on their own: this step on the reference
            again = run(merge.notebook, cannot | wrong)
            status += (
                f"; then re-run with the lab's reference for {', '.join(sorted(wrong))} (did not pass its check) so "
                "the "
                "next steps count on their own: "
                + ("ran to the end" if again is None else describe_run(run_dir / name, again, names))
            )
        res.status[name] = status
    if 4 not in missing:  # production_choices is also checked on the learner's own study, made by notebook 4
        _, setup, cells = merges[4]
        reports["4.6"] = judge_question(
            "4.6", [prelude, setup_imports(setup), *cells], wrap, _judge_env(env), run_dir, limits, run_dir=run_dir
        )
    else:
        reports["4.6"] = _missing_report(QUESTIONS["4.6"], STEP_NOTEBOOKS[4], "missing")
    res.code = "\n\n".join(codes)
    for q in QUESTIONS.values():
        if q.kind == "code":
            d = reports[q.id].to_dict()
            res.points[q.id] = float(d["points"])
            res.reports.append(d)
    for step, report in results_reports.items():  # the results files, checked by the grader itself
        res.points[RESULTS_QUESTION[step]] = report.points
        res.reports.append(report.to_dict())
    s1 = run_dir / "step1_baseline.json"
    if s1.is_file():
        try:
            d = json.loads(s1.read_text())
            if d.get("preset") != preset or d.get("seed") != res.seed:
                res.flags.append(
                    f"results made with preset {d.get('preset')} / seed {d.get('seed')}, graded for {preset} / "
                    f"{res.seed}"
                )
        except (ValueError, OSError):
            pass
    return res


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


def cannot_run(report: Report) -> bool:
    """A function the lab cannot run on: a stub, one that raised, hung, blew its memory or is missing."""
    return report.status != "" or any(
        not c.passed and c.id.rsplit(".", 1)[-1] in ("runs", "limits") or c.id == f"q{report.question}"
        for c in report.checks
    )


def _missing_report(q, notebook: str, why: str) -> Report:
    return Report(
        q.step,
        q.title,
        "",
        question=q.id,
        status=why,
        checks=[
            Check(
                f"q{q.id}",
                False,
                f"{notebook} handed in with {', '.join(q.functions)}",
                why,
                f"hand in {notebook}",
                points=q.points,
            )
        ],
    )


def flag_copies(results: list[LearnerResult], threshold: float = 0.8) -> None:
    """Near-copies of learner code (copydetect's winnowed fingerprints: renamed variables and
    reordered statements still match) and identical written answers: flags, never verdicts."""
    import copydetect

    def fingerprint(code: str):
        try:
            return copydetect.CodeFingerprint("answers.py", 25, 1, fp=io.StringIO(code), language="python")
        except Exception:  # noqa: BLE001 - code that does not tokenize is not compared
            return None

    own = [(r, fingerprint(r.code)) for r in results if r.code.strip() and "NotImplementedError" not in r.code]
    for i, (a, fa) in enumerate(own):
        for b, fb in own[i + 1 :]:
            if fa is None or fb is None:
                continue
            _, (sim_a, sim_b), _ = copydetect.compare_files(fa, fb)
            sim = min(sim_a, sim_b)
            if sim >= threshold:
                a.flags.append(f"code {100 * sim:.0f}% similar to {b.learner}")
                b.flags.append(f"code {100 * sim:.0f}% similar to {a.learner}")
    groups: dict[str, list[str]] = {}
    for r in results:
        text = normalise(" ".join(r.answers[k] for k in sorted(r.answers)))
        if text and "YOUR ANSWER HERE" not in text:
            groups.setdefault(hashlib.sha256(text.encode()).hexdigest(), []).append(r.learner)
    for names in groups.values():
        if len(names) > 1:
            for r in results:
                if r.learner in names:
                    r.flags.append(f"identical written answers to {', '.join(n for n in names if n != r.learner)}")


# ----------------------------------------------------------------------------- outputs
def gradebook_rows(results: list[LearnerResult], manual: dict[tuple[str, str], float] | None = None) -> list[dict]:
    rows = []
    for r in results:
        row = {"learner": r.learner, "preset": r.preset, "seed": r.seed, "execution": r.execution}
        for q in QUESTIONS.values():
            row[f"q{q.id}"] = (
                (manual or {}).get((r.learner, q.id), "") if q.kind == "written" else r.points.get(q.id, 0.0)
            )
        for step in STEP_NOTEBOOKS:
            row[f"step{step}"] = round(
                sum(r.points.get(q.id, 0.0) for q in QUESTIONS.values() if q.step == step and q.kind != "written"), 2
            )
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


def feedback_page(r: LearnerResult) -> str:
    """One page per learner, readable in any browser: points per question, every check with its hint."""
    rows = "".join(
        f"<tr><td><a href='#q{html.escape(q.id)}'>{html.escape(q.id)}</a></td><td>{html.escape(q.title)}</td>"
        f"<td>{r.points.get(q.id, 0):g} / {q.points}</td><td>{html.escape(_cause(r, q))}</td></tr>"
        for q in QUESTIONS.values()
        if q.kind != "written"
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
<p>Preset <b>{html.escape(r.preset)}</b>, your seed <b>{r.seed}</b>. Automatic points:
<b>{r.auto_total:g} / {AUTO_POINTS}</b>;
the written answers ({MANUAL_POINTS} points) are graded by your instructor.</p>
<h2>Notebooks</h2><ul>{status}</ul>
<h2>Points</h2><table><tr><th>question</th><th></th><th>points</th><th>why points were lost</th></tr>{rows}</table>
<h2>Every check</h2>{reports}</body></html>
"""


def grade_class(
    submissions: Path,
    preset: str,
    out: Path,
    jobs: int = 1,
    timeout: float = 900.0,
    limits: Limits = Limits(),
    notebook_memory: int = 16 << 30,
    shard: tuple[int, int] = (1, 1),
) -> list[LearnerResult]:
    """Grade every learner folder of ``submissions`` (or, with ``shard=(k, n)``, the k-th of n
    deterministic slices of them, for a scheduler's array job; ``merge-shards`` joins the gradebooks)."""
    submissions, out = Path(submissions), Path(out)
    folders = sorted(
        p for p in submissions.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    if not folders:
        raise ValueError(f"{submissions} holds no learner folders: one folder per learner, named by the learner id")
    k, n = shard
    if not 1 <= k <= n:
        raise ValueError(f"--shard {k}/{n}: K must be between 1 and N")
    folders = folders[k - 1 :: n]
    cfg = get_config(preset)
    resolve_base_model(cfg, progress=False)  # built once here, shared read-only with every learner
    if cfg.base_model is None:
        data_dir()
    sandbox, threads, cache = Sandbox(), max(1, (os.cpu_count() or 1) // max(1, jobs)), cache_root().resolve()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        hide = (out.resolve(), submissions.resolve())
        results = list(
            pool.map(
                lambda f: grade_learner(
                    f, preset, out, timeout, threads, sandbox, cache, limits, hide, notebook_memory
                ),
                folders,
            )
        )
    flag_copies(results)
    write_gradebook(out, preset, sandbox.name, results)
    return results


def _results_of(data: dict) -> list[LearnerResult]:
    return [
        LearnerResult(
            d["learner"],
            d["seed"],
            data["preset"],
            d["status"],
            d["points"],
            d["reports"],
            d.get("answers", {}),
            d.get("code", ""),
            d["flags"],
            d.get("notices", []),
        )
        for d in data["learners"]
    ]


def write_gradebook(out: Path, preset: str, sandbox: str, results: list[LearnerResult]) -> list[dict]:
    rows = gradebook_rows(results)
    write_csv(out / "grades.csv", rows)
    write_csv(out / "rubric.csv", rubric_rows(results))
    write_json_atomic(
        out / "grades.json",
        {
            "preset": preset,
            "sandbox": sandbox,
            "learners": [
                {
                    "learner": r.learner,
                    "seed": r.seed,
                    "status": r.status,
                    "points": r.points,
                    "flags": r.flags,
                    "reports": r.reports,
                    "notices": r.notices,
                    "answers": r.answers,
                    "code": r.code,
                }
                for r in results
            ],
        },
    )
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    for r in results:
        (out / "feedback" / f"{r.learner}.html").write_text(feedback_page(r), encoding="utf-8")
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
                raise ValueError(
                    f"rubric line {i}: score {score!r} for {row.get('learner')} {row.get('question')} is not a number "
                    "0-3"
                ) from None
            q = QUESTIONS.get(row.get("question", ""))
            if q is None or q.kind != "written" or not 0 <= value <= q.points:
                raise ValueError(f"rubric line {i}: {row.get('question')!r} takes a score from 0 to 3, got {score}")
            manual[(row["learner"], q.id)] = value
    rows = gradebook_rows(_results_of(data), manual)
    write_csv(grades_dir / "grades_final.csv", rows)
    return rows
