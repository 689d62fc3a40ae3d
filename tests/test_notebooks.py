"""The notebooks as learners and CI meet them: built from their sources, the student version free
of solutions and runnable to its end, the solution version worth every automatic point."""

import json
import re
import runpy
import time
from pathlib import Path

import nbformat
import pytest

from checkers.core.questions import QUESTIONS
from checkers.results.score import answers_in, reports_in, score_notebooks
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import NOTEBOOK_DIR, execute_lab, execute_notebook

build = runpy.run_path(str(NOTEBOOK_DIR / "build.py"))
SOURCES = sorted((NOTEBOOK_DIR / "src").glob("[0-9][0-9]_*.py"))


def code_of(path: Path) -> str:
    """The code cells and answer cells, less the stubs' one-line hints (markdown may teach what to write)."""
    nb = json.loads(path.read_text())
    lines = [
        ln
        for c in nb["cells"]
        if c["cell_type"] == "code" or "answer" in c["metadata"].get("tags", [])
        for ln in "".join(c["source"]).splitlines()
    ]
    return "\n".join(ln for ln in lines if "raise NotImplementedError(" not in ln)


def test_committed_notebooks_match_their_sources():
    assert len(SOURCES) == 4
    assert build["main"](["--check"]) == 0, "run `make notebooks` and commit the result"


def test_a_stale_notebook_is_detected(tmp_path, monkeypatch):
    src = SOURCES[0]
    books = build["build"](src)
    text = build["render"](books["student"])
    assert text == (NOTEBOOK_DIR / src.name.replace(".py", ".ipynb")).read_text()
    edited = src.read_text().replace("Corpus perplexity", "Corpus perplexity, edited")
    (tmp_path / src.name).write_text(edited)
    assert build["render"](build["build"](tmp_path / src.name)["student"]) != text


def test_no_solution_line_in_a_student_notebook():
    for src in SOURCES:
        text = src.read_text()
        solution_lines = set()
        for region in re.findall(r"### BEGIN SOLUTION.*?\n(.*?)### END SOLUTION", text, flags=re.S):
            solution_lines |= {ln.strip().lstrip("# ").strip() for ln in region.splitlines() if len(ln.strip()) >= 12}
        student = code_of(NOTEBOOK_DIR / f"{src.stem}.ipynb")
        solution = code_of(NOTEBOOK_DIR / "solutions" / f"{src.stem}.ipynb")
        assert solution_lines and all(line in solution for line in solution_lines)
        leaked = [line for line in solution_lines if line in student]
        assert not leaked, f"{src.stem}: {leaked[:3]}"
        assert "BEGIN SOLUTION" not in student and "BEGIN SOLUTION" not in solution
        assert "raise NotImplementedError(" in (NOTEBOOK_DIR / f"{src.stem}.ipynb").read_text()


def test_every_question_has_its_cell():
    written = {}
    for src in SOURCES:
        written.update(answers_in(NOTEBOOK_DIR / f"{src.stem}.ipynb"))
        assert all(a.strip() == "YOUR ANSWER HERE" for a in answers_in(NOTEBOOK_DIR / f"{src.stem}.ipynb").values())
    assert sorted(written) == sorted(q for q, v in QUESTIONS.items() if v.kind == "written")


def test_the_points_the_notebooks_announce_are_the_graders():
    """Every "Question X.Y ... (N points)" and "Check step N (P points)" heading says what questions.py gives."""
    from checkers.core.questions import RESULTS_QUESTION

    said = {}
    for src in SOURCES:
        text = src.read_text()
        said.update({q: int(p) for q, p in re.findall(r"Question (\d\.\d) ·[^\n]*\((\d+) points\)", text)})
        said.update(
            {RESULTS_QUESTION[int(n)]: int(p) for n, p in re.findall(r"Check step (\d) \((\d+) points\)", text)}
        )
    assert said == {q: v.points for q, v in QUESTIONS.items() if v.kind != "written"}


def test_solution_notebooks_score_every_automatic_point(lab_run):
    scores = score_notebooks(lab_run)
    # the core's 100 are 91 automatic and W4's 9; Go further's 51 are 39 automatic and four written 3s
    assert {t: (v["max"], v["written_max"]) for t, v in scores["tracks"].items()} == {
        "core": (91, 9),
        "go-further": (39, 12),
    }
    assert all(v["total"] == v["max"] for v in scores["tracks"].values()), scores
    assert all(r["status"] == "passed" for r in scores["questions"].values())
    for written in ("experiments.json", "ddp.json", "plots/step3_experiments.png"):  # the full track sets GO_FURTHER
        assert (lab_run / written).is_file(), written


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """The student notebooks as learners receive them: executed from a `make release` folder, whose
    own cptlab and checkers the kernel imports (no solutions beside them). The core track: Go
    further's stubs as handed out run on the full track in tests/test_classroom.py (eve)."""
    import os

    from checkers.grading.release import release

    rel = release(tmp_path_factory.mktemp("release") / "release")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONPATH"] = str(rel)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the kernel's bytecode files show which cptlab it imported
    try:
        t0 = time.perf_counter()
        run = execute_lab(
            "smoke", run_dir=tmp_path_factory.mktemp("student") / "run", notebook_dir=rel / "notebooks", track="core"
        )
        (run / "core_track_seconds.txt").write_text(f"{time.perf_counter() - t0:.3f}")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return run, rel


def test_student_notebooks_run_to_the_end_with_not_implemented_yet(student_run):
    student_run, rel = student_run
    assert list((rel / "cptlab" / "lab" / "__pycache__").glob("steps.*.pyc")), (
        "the kernel imported another cptlab than the release's"
    )
    for name in STEP_NOTEBOOKS.values():
        nb = json.loads((student_run / name).read_text())
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], name
        text = json.dumps(outputs)
        assert "Traceback" not in text, name
        reports = reports_in(student_run / name)
        code_qs = [q for q, v in QUESTIONS.items() if v.kind == "code" and v.step == int(name[:2])]
        for q in code_qs:
            if QUESTIONS[q].track == "core":
                assert reports[q]["status"] == "not implemented yet" and reports[q]["points"] == 0, (name, reports[q])
            else:
                assert q not in reports, (name, q)  # left out of a core-track run
    scores = score_notebooks(student_run)
    assert all(v["total"] == 0 for v in scores["tracks"].values()) and len(scores["questions"]) == len(
        [q for q in QUESTIONS.values() if q.kind != "written"]
    )
    step1 = json.dumps(json.loads((student_run / "01_baseline.ipynb").read_text())["cells"])
    assert "`corpus_perplexity` is not written yet; this run goes on with the lab's reference" in step1
    step2 = json.dumps(json.loads((student_run / "02_corpus.ipynb").read_text())["cells"])
    assert "`to_blocks` is not written yet" in step2  # Go further's stub, its check left out: the reference
    assert all((student_run / f"step{s}_{n}.json").is_file() for s, n in ((1, "baseline"), (2, "corpus"), (3, "cpt")))
    results = reports_in(student_run / "04_tradeoff.ipynb")["4.7"]  # the steps ran on the reference, and earn nothing
    assert results["points"] == 0 and any(c["id"] == "s4.your_functions" for c in results["checks"] if not c["passed"])


# A learner's "Run All" with the switch as handed out may take longer than the core-track run only by
# Go further's check cells and the skipped cells' one line each: at most this much on `smoke`.
RUN_ALL_MARGIN = (1.5, 60.0)  # (times the core track's wall time, plus seconds)


def test_run_all_as_handed_out_waits_only_for_the_core(student_run, tmp_path):
    """Every cell of the four student notebooks executed with the parameters cell as handed out
    (GO_FURTHER = False): no Go further run trains or evaluates, each says so in one line with what it
    would cost, every core cell runs, and the whole takes about the core track's time."""
    import os

    core_run, rel = student_run
    run = tmp_path / "run"
    run.mkdir()
    params = {"PRESET": "smoke", "RUN_DIR": str(run), "SEED": 1234, "OVERRIDES": {}}  # no GO_FURTHER: the default
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(rel)
    t0 = time.perf_counter()
    try:
        for name in STEP_NOTEBOOKS.values():
            nb = nbformat.read(rel / "notebooks" / name, as_version=4)
            assert "GO_FURTHER = False" in next(
                c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])
            )
            execute_notebook(rel / "notebooks" / name, run / name, params, cwd=run, track="full")
    finally:
        os.environ.pop("PYTHONPATH", None) if saved is None else os.environ.__setitem__("PYTHONPATH", saved)
    seconds = time.perf_counter() - t0

    gated = []
    for name in STEP_NOTEBOOKS.values():
        nb = nbformat.read(run / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            assert cell.execution_count is not None, (name, cell.source[:80])  # every cell ran, the core's too
            text = json.dumps(cell.outputs)
            assert '"output_type": "error"' not in text and "Traceback" not in text, (name, cell.source[:80])
            if "go_further=GO_FURTHER" in cell.source:
                gated.append(cell.source)
                lines = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
                assert lines.count("Go further: skipped") == 1 and len(lines.strip().splitlines()) == 1, lines
                if "experiments_plot" not in cell.source:
                    assert "set GO_FURTHER = True in the parameters cell" in lines and "minute" in lines, lines
    assert len(gated) == 4  # the speed table, two processes, the recipe's runs and their plot
    for written in ("experiments.json", "ddp.json", "ddp_two.json", "plots/step3_experiments.png"):
        assert not (run / written).exists(), f"{written}: a Go further run ran with GO_FURTHER = False"
    assert all(
        (run / f"step{s}_{n}.json").is_file() for s, n in ((1, "baseline"), (2, "corpus"), (3, "cpt"), (4, "tradeoff"))
    )
    scores = score_notebooks(run)
    assert all(v["total"] == 0 for v in scores["tracks"].values())  # stubs as handed out: nothing earned
    core_seconds = float((core_run / "core_track_seconds.txt").read_text())
    factor, plus = RUN_ALL_MARGIN
    assert seconds <= factor * core_seconds + plus, (seconds, core_seconds)


@pytest.mark.slow
def test_a_lab_error_shows_its_message_not_a_traceback(tmp_path):
    dst = tmp_path / "01.ipynb"
    params = {"PRESET": "smoke", "RUN_DIR": str(tmp_path / "run"), "SEED": 1, "OVERRIDES": {"max_steps": -1}}
    with pytest.raises(
        RuntimeError, match="01_baseline.ipynb stopped with an error: ConfigError: max_steps must be > 0"
    ):
        execute_notebook(NOTEBOOK_DIR / "solutions" / "01_baseline.ipynb", dst, params)
    nb = json.loads(dst.read_text())
    errors = [
        o
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert all(len(e.get("traceback", [])) <= 1 for e in errors)
    assert "max_steps must be > 0" in json.dumps(nb["cells"]) and "Traceback" not in json.dumps(nb["cells"])


def test_a_core_run_leaves_out_go_furthers_checks_and_runs_and_keeps_its_definitions():
    from cptlab.notebook.tracks import LEFT_OUT, defines_function, for_track

    nb = nbformat.read(NOTEBOOK_DIR / "03_cpt.ipynb", as_version=4)
    core, full = for_track(nb, "core"), for_track(nb, "full")
    assert [c.source for c in full.cells] == [c.source for c in nb.cells]
    for before, after in zip(nb.cells, core.cells):
        tags = before.metadata.get("tags", [])
        if before.cell_type == "code" and "go-further" in tags and not defines_function(before.source):
            assert after.source == LEFT_OUT, before.source  # check_cpt_loop(...), the speed table, ...
        else:
            assert after.source == before.source  # the core, the markdown, and def cpt_loop (a stub)
    left = [c for c in core.cells if c.source == LEFT_OUT]
    assert len(left) >= 5 and any("def cpt_loop" in c.source for c in core.cells)
    with pytest.raises(ValueError, match="track must be one of core, full"):
        for_track(nb, "go-further")


def test_a_stub_whose_check_did_not_run_is_replaced_and_a_written_function_is_used(capsys, monkeypatch):
    """A core-track run leaves Go further's check cells out: a still-handed-out stub gets the reference
    (said in one line), a function the learner wrote is used; a recorded verdict still decides."""
    from cptlab.notebook import fallback

    monkeypatch.setattr(fallback, "_verdicts", {})
    monkeypatch.delenv(fallback.ENV, raising=False)

    def to_blocks(stream, block_size):
        """The training stream as windows."""
        raise NotImplementedError("to_blocks: the training stream as windows")

    def lr_at(step, peak_lr, warmup_steps, max_steps):
        """Written, never checked."""
        if step < 0:
            raise NotImplementedError("not for negative steps")
        return peak_lr

    assert fallback.use(to_blocks, "to_blocks") is None
    assert "`to_blocks` is not written yet" in capsys.readouterr().out
    assert fallback.use(lr_at, "lr_at") is lr_at
    fallback.record(["lr_at"], passed=False)
    assert fallback.use(lr_at, "lr_at") is None and "did not pass its check" in capsys.readouterr().out


def test_a_core_runs_summary_asks_the_core_only():
    from checkers.results.score import complete, format_scores

    rows = {
        q: {"title": v.title, "step": v.step, "track": v.track, "max": v.points, "status": "passed", "failed": []}
        for q, v in QUESTIONS.items()
        if v.kind != "written"
    }
    for q, r in rows.items():
        r["points"] = float(r["max"]) if r["track"] == "core" else 0.0
    scores = {
        "questions": rows,
        "tracks": {
            "core": {"total": 91.0, "max": 91, "written_max": 9},
            "go-further": {"total": 0.0, "max": 39, "written_max": 12},
        },
    }
    assert complete(scores, "core") and not complete(scores, "full")
    text = format_scores(scores, "core")
    assert "Go further: left out of this core-track run" in text and "3.3 cpt_loop" not in text
    assert "core: automatic points" in text and "91/91" in text.replace(" ", "")
