"""Grading a class on `smoke`: six submissions, every row asserted (points, status, the named
hint, the time-out, an edited check cell that changes nothing, the copy flag), then the rubric
sheet merged back."""
import csv
import json
import shutil

import nbformat
import pytest

from checkers.classroom import grade_class, learner_seed, merge_answers, merge_rubric
from cptlab.notebooks import NOTEBOOK_DIR
from cptlab.results import STEP_NOTEBOOKS

pytestmark = pytest.mark.slow
SOL = NOTEBOOK_DIR / "solutions"
MEAN_OF_PPL = '''def corpus_perplexity(model, ids, block_size):
    with torch.no_grad():
        per = []
        for b in range(0, len(ids), block_size):
            x = ids[b : b + block_size]
            if len(x) < 2:
                break
            nll = F.cross_entropy(model(x[None]).logits[0, :-1].float(), x[1:], reduction="sum").item()
            per.append((nll, len(x) - 1))
    return sum(math.exp(s / n) for s, n in per) / len(per), sum(s for s, _ in per), sum(n for _, n in per)
'''
FAKE = '''{"question": "1.1", "points": 14, "max_points": 14, "passed": true, "status": "", "checks": [], "step": 1, "title": "x", "run_dir": ""}'''


def _with_function(nb, name: str, source: str):
    for cell in nb.cells:
        if "answer" in cell.metadata.get("tags", []):
            cell.source = f"My own answer, written while fixing {name}: {source[-40:]}"
        if cell.cell_type == "code" and f"def {name}(" in cell.source and "solution" in cell.metadata.get("tags", []):
            cell.source = source
    assert name in "".join(c.source for c in nb.cells)
    return nb


def _submit(folder, books: dict):
    folder.mkdir(parents=True)
    for name, nb in books.items():
        nbformat.write(nb, folder / name)


def _sol(name):
    return nbformat.read(SOL / name, as_version=4)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    sub = tmp_path_factory.mktemp("class") / "submissions"
    nb1 = STEP_NOTEBOOKS[1]
    _submit(sub / "ada", {n: _sol(n) for n in STEP_NOTEBOOKS.values()})
    _submit(sub / "ben-copy", {n: _sol(n) for n in STEP_NOTEBOOKS.values()})
    _submit(sub / "cy-mistake", {nb1: _with_function(_sol(nb1), "corpus_perplexity", MEAN_OF_PPL)})
    _submit(sub / "dee-raises", {nb1: _with_function(_sol(nb1), "corpus_perplexity",
                                                     "def corpus_perplexity(model, ids, block_size):\n    raise ValueError('boom')\n")})
    _submit(sub / "eve-hangs", {nb1: _with_function(_sol(nb1), "corpus_perplexity",
                                                    "def corpus_perplexity(model, ids, block_size):\n    while True:\n        pass\n")})
    edited = nbformat.read(NOTEBOOK_DIR / nb1, as_version=4)  # the student version: still a stub
    for cell in edited.cells:
        if cell.cell_type == "code" and cell.source.startswith("check_perplexity("):
            cell.source = f"import json\nfrom IPython.display import display\ndisplay({{'application/vnd.cptlab.report+json': json.loads('{FAKE}')}}, raw=True)"
        if "solution" in cell.metadata.get("tags", []):  # an answer cell that prints points of its own
            cell.source += f"\n\nimport json\nfrom IPython.display import display\ndisplay({{'application/vnd.cptlab.report+json': json.loads('{FAKE}')}}, raw=True)"
    out = tmp_path_factory.mktemp("grades")
    escape = out.parent / "escaped.txt"
    for cell in edited.cells:
        if "solution" in cell.metadata.get("tags", []):  # and tries to write outside its run folder
            cell.source += f"\n\ntry:\n    open({str(escape)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
    _submit(sub / "fay-edits-checks", {nb1: edited})
    results = grade_class(sub, "smoke", out, jobs=2, timeout=90)
    rows = {r["learner"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    return {r.learner: r for r in results}, rows, out, escape


def test_every_row_of_the_class(graded):
    results, rows, out, _ = graded
    assert set(rows) == {"ada", "ben-copy", "cy-mistake", "dee-raises", "eve-hangs", "fay-edits-checks"}
    ada = rows["ada"]
    assert float(ada["auto_total"]) == 88 and ada["execution"] == "ok" and ada["preset"] == "smoke"
    assert int(ada["seed"]) == learner_seed("ada") != learner_seed("ben-copy")
    cy = results["cy-mistake"]
    assert cy.points["1.1"] < 14 and cy.points["1.2"] < 5 and cy.status[STEP_NOTEBOOKS[1]] == "ok"
    step1 = next(rep for rep in cy.reports if rep.get("question") == "1.2")
    assert "s1.code_ppl_from_raw" in [c["id"] for c in step1["checks"] if not c["passed"]]  # the results check sees it too
    hints = " ".join(c["hint"] for rep in cy.reports if rep.get("question") == "1.1" for c in rep["checks"])
    assert "mistake: a mean of per-window perplexities" in hints
    assert results["dee-raises"].points["1.1"] == 0
    assert rows["dee-raises"]["execution"].startswith("01: error: ValueError: boom")
    assert rows["eve-hangs"]["execution"].startswith("01: time-out after 90 s")
    assert float(rows["eve-hangs"]["auto_total"]) == 0
    fay = results["fay-edits-checks"]
    assert fay.points["1.1"] == 0 and float(rows["fay-edits-checks"]["auto_total"]) == 0
    assert any(r.get("status") == "not implemented yet" for r in fay.reports)
    for name in ("cy-mistake", "dee-raises", "eve-hangs", "fay-edits-checks"):
        assert "02: missing" in rows[name]["execution"]
    assert "identical code to ada" in rows["ben-copy"]["flags"] and "identical code to ben-copy" in rows["ada"]["flags"]
    assert not rows["cy-mistake"]["flags"]


def test_runs_use_the_learners_seed_and_the_instructors_preset(graded):
    _, _, out, _ = graded
    s1 = json.loads((out / "runs" / "ada" / "step1_baseline.json").read_text())
    assert s1["preset"] == "smoke" and s1["seed"] == learner_seed("ada")
    s2 = json.loads((out / "runs" / "ben-copy" / "step2_corpus.json").read_text())
    assert s2["seed"] == learner_seed("ben-copy")


def test_feedback_pages_and_rubric_merge(graded):
    results, _, out, _ = graded
    page = (out / "feedback" / "cy-mistake.html").read_text()
    assert "mistake: a mean of per-window perplexities" in page and "cy-mistake" in page
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    assert {(r["learner"], r["question"]) for r in sheet} >= {("ada", "W1"), ("ada", "W4")}
    assert "Which set is harder" in next(r["answer"] for r in sheet if r["learner"] == "ada" and r["question"] == "W1")
    for r in sheet:
        r["score"] = "3" if r["learner"] == "ada" else ""
    with open(out / "rubric_filled.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(sheet)
    rows = {r["learner"]: r for r in merge_rubric(out, out / "rubric_filled.csv")}
    assert rows["ada"]["total"] == 100 and rows["ada"]["written_total"] == 12
    assert rows["cy-mistake"]["written_total"] == ""
    bad = [dict(r, score="7") if i == 0 else r for i, r in enumerate(sheet)]
    with open(out / "rubric_bad.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(bad)
    with pytest.raises(ValueError, match="score from 0 to 3"):
        merge_rubric(out, out / "rubric_bad.csv")


def test_merging_takes_only_the_answer_cells():
    pristine = nbformat.read(NOTEBOOK_DIR / STEP_NOTEBOOKS[1], as_version=4)
    submitted = nbformat.read(SOL / STEP_NOTEBOOKS[1], as_version=4)
    for cell in submitted.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = "PRESET = 'gpt2'"
    merged, answers = merge_answers(pristine, submitted)
    params = next(c for c in merged.cells if "parameters" in c.metadata.get("tags", []))
    assert "PRESET = \"tiny\"" in params.source
    assert any("math.exp(nll_sum / n_scored)" in src for src in answers.values())


def test_a_submission_cannot_write_outside_its_run_folder(graded):
    *_, escape = graded
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed: grade-class runs submissions without its sandbox (.ci/run installs it)")
    assert not escape.exists()
