"""Grading one learner: each step's answer cells judged question by question in the sandbox,
the step run as written (on the reference where a function cannot run), its results checked.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import nbformat

from checkers.core.questions import GRADED_TRACKS, QUESTIONS, RESULTS_QUESTION
from checkers.core.report import Check, Report
from checkers.grading.flags import reaches_reference
from checkers.grading.judge import Limits, judge_question, judge_questions, setup_imports
from checkers.grading.library_copies import library_copies
from checkers.grading.result import LearnerResult
from checkers.grading.sandbox import Sandbox, execute, learner_env
from checkers.grading.submissions import (
    ANSWER_TAGS,
    Merge,
    _answer_cells,
    defined_functions,
    for_grading,
    merge_answers,
    read_submission,
    setup_cell,
    with_stubs,
)
from checkers.results.steps import CHECKS, not_yours
from cptlab.core.results import STEP_FILES, STEP_NOTEBOOKS
from cptlab.notebook.execute import NOTEBOOK_DIR
from cptlab.notebook.tracks import GO_FURTHER, for_track


def fresh_step(run_dir: Path, step: int) -> None:
    """What a stopped run of ``step`` left behind (its results and the later steps', its checkpoints, its
    model, its corpus), so that the re-run on the reference starts clean and resumes nothing."""
    for k, name in STEP_FILES.items():
        if k >= step:
            (run_dir / name).unlink(missing_ok=True)
    stale = {2: ("corpus", "checkpoints", "models"), 3: ("checkpoints", "models"), 4: ()}.get(step, ())
    for sub in stale:
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def learner_seed(learner_id: str) -> int:
    """The learner's seed, derived from the learner id: the same every time the class is graded,
    different between learners (so a copied run folder cannot pass for an honest one)."""
    return int.from_bytes(hashlib.sha256(f"cptlab-learner:{learner_id}".encode()).digest()[:4], "big") % (2**31 - 1)


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
    track: str = "core",
) -> LearnerResult:
    """One learner: each graded question's functions judged, each step's notebook run (on the lab's
    reference for what failed its check, and, on the core track, for Go further, whose long cells
    are left out), each step's results checked."""
    learner = folder.name
    res = LearnerResult(learner, learner_seed(learner), preset, track=track)
    graded = {q.id for q in QUESTIONS.values() if q.track in GRADED_TRACKS[track]}
    run_track = "core" if track == "core" else "full"
    run_dir = (out / "runs" / learner).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "merged").mkdir(parents=True)
    env = learner_env(run_dir, cache, threads)
    params = {
        "PRESET": preset,
        "RUN_DIR": str(run_dir),
        "SEED": res.seed,
        "OVERRIDES": {},
        "GO_FURTHER": run_track == "full",
    }
    wrap = lambda cmd: sandbox.wrap(cmd, run_dir, cache, hide)  # noqa: E731
    prelude = "\n".join(f"{k} = {v!r}" for k, v in params.items())  # the parameters cell, as the notebook run gets it
    codes, reports, results_reports, missing, merges = [], {}, {}, set(), {}
    for step, name in STEP_NOTEBOOKS.items():
        pristine = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        questions = [q for q in QUESTIONS.values() if q.step == step and q.kind == "code" and q.id in graded]
        names = {f for q in questions for f in q.functions}
        not_graded = {  # Go further on the core track: run on the lab's reference, as a learner who skipped it
            f
            for q in QUESTIONS.values()
            if q.step == step and q.kind == "code" and q.id not in graded
            for f in q.functions
        }
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
        stubs = {c.id: c.source for c in _answer_cells(pristine)}
        for cell in _answer_cells(merge.notebook):
            tags = set(cell.metadata.get("tags", []))
            if cell.cell_type == "code" and submitted is not None:
                if (run_track == "full" or GO_FURTHER not in tags) and cell.source != stubs.get(cell.id):
                    codes.append(cell.source)  # what the near-copy flag compares: the graded answers written
                    res.flags += [f"{name[:2]} {what}" for what in library_copies(cell.source)]
                for what in reaches_reference(cell.source):
                    fns = ", ".join(defined_functions(cell.source)) or "an answer cell"
                    res.flags.append(f"{name[:2]} {fns}: {what}")
            for qid in tags & graded:
                if submitted is not None:
                    res.answers[qid] = cell.source
        setup = setup_cell(pristine)
        merges[step] = (merge, setup, cells)
        # the judge, one sandboxed process for the step's questions (4.6 also needs step 4's study: below)
        judged = [q.id for q in questions if q.id != "4.6"]
        if submitted is None:
            reports.update({qid: _missing_report(QUESTIONS[qid], name, why) for qid in judged})
        elif judged:
            reports.update(
                judge_questions(judged, [prelude, setup_imports(setup), *cells], wrap, _judge_env(env), run_dir, limits)
            )
        failed = [q for q in questions if q.id in reports and not reports[q.id].passed]
        cannot = {f for q in failed if cannot_run(reports[q.id]) for f in q.functions}  # raised, hung, a stub
        wrong = {f for q in failed for f in q.functions} - cannot  # returned values, the wrong ones
        if submitted is None:
            cannot = set(names)
        src = run_dir / "merged" / name

        def run(nb, reference: set[str]) -> str | None:
            nbformat.write(for_track(for_grading(nb), run_track), src)
            env_nb = {**env, "CPTLAB_USE_REFERENCE": ",".join(sorted(reference | not_graded))}
            return execute(src, run_dir / name, params, run_dir, env_nb, timeout, sandbox, cache, hide, notebook_memory)

        # 1. the step as the learner wrote it, every function that did not pass its check (raised, hung, a
        # stub, or wrong values) on the lab's reference, as the notebook itself does: a step's results earn
        # the same whether a function failed loudly or quietly, and one mistake costs its own question
        replace = cannot | wrong if submitted is not None else set(names)
        why_not = run(merge.notebook, replace)
        status = (
            describe_run(run_dir / name, why_not, names)
            if submitted is not None
            else f"{why}; run on the lab's reference so the next steps count"
        )
        if submitted is not None and cannot:
            status += f"; ran with the lab's reference for {', '.join(sorted(cannot))} (raised, hung or not written)"
        if submitted is not None and wrong:
            status += f"; ran with the lab's reference for {', '.join(sorted(wrong))} (did not pass its check)"
        if why_not is not None:  # 2. it stopped: again from a clean state, every function of it on the reference
            (run_dir / "executed-with-your-cells").mkdir(exist_ok=True)
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, run_dir / "executed-with-your-cells" / name)
            fresh_step(run_dir, step)
            again = run(with_stubs(merge.notebook, pristine), set(names))
            status += "; re-run on the lab's reference so its results and the next steps count: " + (
                "ran to the end" if again is None else describe_run(run_dir / name, again, names)
            )
        # the step's results, graded on the run its code produced
        report = CHECKS[step](run_dir, preset, own_verdicts=False)
        if step in missing:
            not_yours(report, f"{name} was not handed in: the lab ran the step on its reference")
        elif (runs := [q for q in questions if q.runs_the_step and q.id in reports]) and all(
            reports[q.id].status == "not implemented yet" for q in runs
        ):
            not_yours(report, "every function of this step is still a stub: the lab ran the step on its reference")
        results_reports[step] = report
        res.status[name] = status
    if "4.6" in graded and 4 not in missing:  # production_choices is also checked on the learner's own study
        _, setup, cells = merges[4]
        reports["4.6"] = judge_question(
            "4.6", [prelude, setup_imports(setup), *cells], wrap, _judge_env(env), run_dir, limits, run_dir=run_dir
        )
    elif "4.6" in graded:
        reports["4.6"] = _missing_report(QUESTIONS["4.6"], STEP_NOTEBOOKS[4], "missing")
    res.code = "\n\n".join(codes)
    for q in QUESTIONS.values():
        if q.kind == "code" and q.id in graded:
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
