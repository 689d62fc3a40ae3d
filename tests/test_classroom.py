"""Grading a class on `smoke`, built from the solution notebooks: every figure of every row asserted.

ada: the solutions (85). bo: the same notebooks with the cells shuffled, new ids and every variable
renamed (85, the same written answers, flagged as a near-copy of ada). cy: mistakes in four
notebooks (a mean of per-window perplexities, a split that ignores its seed, an `lr_at` that never
returns, a CPT loop that leaves the model in eval mode, a reversed interpolation, a
`production_choices` that patches the checker at call time): each costs its own question only.
dee: a `NameError` in `pack_documents`, a monkeypatched check above an `optimizer_step` that never
steps, a `choose_variant` that calls the library's reference, and code that tries to read the
solutions and to allocate 8 GiB."""

import csv
import json
import random
import re
import shutil

import nbformat
import pytest

from checkers.grading.classroom import grade_class, learner_seed, merge_answers, merge_rubric
from checkers.grading.judge import GiB, Limits
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import NOTEBOOK_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("bwrap"),
        reason=(
            "bubblewrap is not installed: the class test asserts what the sandbox hides (apt-get install bubblewrap; "
            ".ci/run does)"
        ),
    ),
]
SOL = NOTEBOOK_DIR / "solutions"
NB1, NB2, NB3, NB4 = (STEP_NOTEBOOKS[s] for s in (1, 2, 3, 4))

MEAN_OF_PPL = """def corpus_perplexity(model, ids, block_size):
    with torch.no_grad():
        per = []
        for b in range(0, len(ids), block_size):
            x = ids[b : b + block_size]
            if len(x) < 2:
                break
            nll = F.cross_entropy(model(x[None]).logits[0, :-1].float(), x[1:], reduction="sum").item()
            per.append((nll, len(x) - 1))
    return sum(math.exp(s / n) for s, n in per) / len(per), sum(s for s, _ in per), sum(n for _, n in per)
"""
SPLIT_IGNORES_SEED = """def split_documents(doc_ids, eos_id, val_fraction, seed):
    order = np.random.default_rng(0).permutation(len(doc_ids)).tolist()
    target = val_fraction * sum(len(d) + 1 for d in doc_ids)
    val, held = set(), 0
    for i in reversed(order):
        if held >= target:
            break
        val.add(i)
        held += len(doc_ids[i]) + 1
    return (pack_documents([doc_ids[i] for i in order if i not in val], eos_id),
            pack_documents([doc_ids[i] for i in order if i in val], eos_id))
"""
LR_HANGS = """def lr_at(step, peak_lr, warmup_steps, max_steps):
    while True:
        pass
"""
LOOP_LEFT_IN_EVAL = """def cpt_loop(run, lr_at, optimizer_step):
    cfg = run.cfg
    for step in range(run.first_step, cfg.max_steps + 1):
        lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = optimizer_step(run.model, run.batch(step), run.optimizer, cfg.grad_clip)
        run.log(step, lr, loss, grad_norm)
        if step % cfg.curve_every == 0 or step == cfg.max_steps:
            run.model.eval()
            with torch.no_grad():
                point = run.evaluate(step)
            run.curve.append(point)
            if cfg.stop_at_floor and point["forgetting_ratio"] > cfg.retention_floor:
                break
"""
INTERPOLATE_REVERSED = """def interpolate(base_state, cpt_state, alpha):
    return {k: alpha * v + (1 - alpha) * cpt_state[k] if v.is_floating_point() else v for k, v in base_state.items()}
"""

PATCHES_AT_CALL_TIME = """def production_choices(variants, floor):
    try:  # rebinds the checker's answer key and report, as an in-kernel grader would let it
        import checkers.code.exercises as ce
        ce._scenario_answers = lambda vs, fl: {k: {None} for k in ce.SCENARIOS}
        ce.Report.passed = property(lambda self: True)
    except Exception:
        pass
    return {}
"""
PACK_NAME_ERROR = """def pack_documents(doc_ids, eos_id):
    return np.concatenate([np.append(np.asarray(d, dtype=np.int64), eos) for d in doc_ids])
"""
NO_STEP_WITH_FAKE_CHECK = """try:  # a check that always passes, rebound wherever the notebook looks it up
    import checkers, checkers.code.exercises
    from checkers.core.report import Check, Report

    def _always_passes(fn, *args, **kwargs):
        return Report(3, "optimizer_step", "", question="3.2", checks=[Check("q3.2.update", True, "", "", points=12)])

    checkers.check_optimizer_step = checkers.code.exercises.check_optimizer_step = _always_passes
    check_optimizer_step = _always_passes
except ImportError:
    pass


def optimizer_step(model, batch, optimizer, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), norm
"""
CALLS_REFERENCE = """from cptlab.lab.study import recommend


def choose_variant(variants, floor):
    return recommend(variants, floor)["name"]
"""
HOSTILE = """def production_choices(variants, floor):
    import os
    import cptlab
    solutions = os.path.join(os.path.dirname(os.path.dirname(cptlab.__file__)), "notebooks", "solutions")
    leaked = os.path.isdir(solutions) and len(os.listdir(solutions)) > 0
    try:
        big = bytearray(8 << 30)
        big[-1] = 1
        grabbed = True
    except MemoryError:
        grabbed = False
    if leaked or grabbed:
        return {}
    def best(vs):
        return max(vs, key=lambda v: v["code_ppl_drop"])["name"]
    return {
        "code_only_assistant": best(variants),
        "english_within_floor": choose_variant(variants, floor),
        "per_customer_adapters": best([v for v in variants if v["choice"] == "lora"]),
        "no_training_budget": choose_variant([v for v in variants if v["choice"] == "interpolation"], floor),
    }


import os as _os
import cptlab as _c
_sol = _os.path.join(_os.path.dirname(_os.path.dirname(_c.__file__)), "notebooks", "solutions")
if _os.path.isdir(_sol) and _os.listdir(_sol):
    open(_os.path.join(RUN_DIR, "LEAKED"), "w").write("the solutions were readable")
"""


def _sol(name):
    return nbformat.read(SOL / name, as_version=4)


def _replace(nb, name: str, source: str):
    cell = next(
        c
        for c in nb.cells
        if c.cell_type == "code" and f"def {name}(" in c.source and "solution" in c.metadata.get("tags", [])
    )
    if name in ("code_ppl_drop", "forgetting_ratio"):
        cell.source = cell.source + "\n\n" + source
    else:
        cell.source = source
    return nb


def _shuffled(nb, seed: int):
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    random.Random(seed).shuffle(nb.cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"moved-{seed}-{i}"
    return nb


def _renamed(nb):
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    names = {
        "nll_sum": "total_nll",
        "n_scored": "count",
        "order": "perm",
        "held": "acc",
        "target": "goal",
        "train_docs": "tr",
        "val_docs": "va",
        "progress": "frac",
        "norm": "gnorm",
        "under": "ok_ones",
    }
    for cell in nb.cells:
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            for a, b in names.items():
                cell.source = re.sub(rf"\b{a}\b", b, cell.source)
    return nb


CLASS = {}  # the graded class's submissions folder
GRADING = dict(jobs=2, timeout=300, limits=Limits(seconds=25, memory_bytes=4 * GiB))


def _submit(folder, books: dict):
    folder.mkdir(parents=True)
    for name, nb in books.items():
        nbformat.write(nb, folder / name)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    sub = tmp_path_factory.mktemp("class") / "submissions"
    all_nb = list(STEP_NOTEBOOKS.values())
    _submit(sub / "ada", {n: _sol(n) for n in all_nb})
    _submit(sub / "bo", {n: _shuffled(_renamed(_sol(n)), i) for i, n in enumerate(all_nb)})
    _submit(
        sub / "cy",
        {
            NB1: _replace(_sol(NB1), "corpus_perplexity", MEAN_OF_PPL),
            NB2: _replace(_sol(NB2), "split_documents", SPLIT_IGNORES_SEED),
            NB3: _replace(_replace(_sol(NB3), "lr_at", LR_HANGS), "cpt_loop", LOOP_LEFT_IN_EVAL),
            NB4: _replace(
                _replace(_sol(NB4), "production_choices", PATCHES_AT_CALL_TIME), "interpolate", INTERPOLATE_REVERSED
            ),
        },
    )
    _submit(
        sub / "dee",
        {
            NB1: _sol(NB1),
            NB2: _replace(_sol(NB2), "pack_documents", PACK_NAME_ERROR),
            NB3: _replace(_sol(NB3), "optimizer_step", NO_STEP_WITH_FAKE_CHECK),
            NB4: _replace(_replace(_sol(NB4), "choose_variant", CALLS_REFERENCE), "production_choices", HOSTILE),
        },
    )
    out = tmp_path_factory.mktemp("grades")
    CLASS["submissions"] = sub
    results = grade_class(sub, "smoke", out, **GRADING)
    rows = {r["learner"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    return {r.learner: r for r in results}, rows, out


def _report(result, qid):
    return next(r for r in result.reports if r.get("question") == qid)


def test_honest_learners_get_every_point_whatever_the_cell_order(graded):
    results, rows, out = graded
    for name in ("ada", "bo"):
        assert float(rows[name]["auto_total"]) == 85, (name, rows[name])
        assert all(s == "ran to the end" for s in results[name].status.values()), results[name].status
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    answers = {(r["learner"], r["question"]): r["answer"] for r in sheet}
    for q in ("W1", "W2", "W3", "W4", "W5"):
        assert answers[("bo", q)] == answers[("ada", q)] and "YOUR ANSWER HERE" not in answers[("bo", q)]


def test_each_mistake_costs_its_own_question(graded):
    results, rows, _ = graded
    cy = results["cy"].points
    assert cy["1.1"] <= 5 and "mistake: a mean of per-window perplexities" in json.dumps(_report(results["cy"], "1.1"))
    assert cy["2.2"] < 7 and cy["3.1"] == 0 and cy["4.6"] == 0
    # the loop that leaves the model in eval mode: its one check lost, named; step 3 ran on the lab's loop
    assert cy["3.3"] == 5 and "mistake: the model left in eval() mode" in json.dumps(_report(results["cy"], "3.3"))
    # alpha weighting the base: blend and endpoints lost (2.5 of 4), named; a wrong value fails as a crash
    # does: the study ran on the lab's interpolation, so step 4's results keep every point
    assert cy["4.3"] == 1.5 and "mistake: alpha weights the base" in json.dumps(_report(results["cy"], "4.3"))
    assert "ran with the lab's reference for interpolate (did not pass its check)" in results["cy"].status[NB4]
    full = {q: p for q, p in cy.items() if q not in ("1.1", "2.2", "3.1", "3.3", "4.3", "4.6")}
    from checkers.core.questions import QUESTIONS

    assert full == {q: float(QUESTIONS[q].points) for q in full}, full
    assert float(rows["cy"]["auto_total"]) == pytest.approx(85 - (9 - cy["1.1"]) - (7 - cy["2.2"]) - 5 - 1 - 2.5 - 4)
    lr = _report(results["cy"], "3.1")
    assert any(c["id"] == "q3.1.limits" and c["got"].startswith("lr_at:") for c in lr["checks"])
    assert "lr_at" in results["cy"].status[NB3] and "reference" in results["cy"].status[NB3]
    dee = results["dee"].points
    assert dee["2.1"] == 0 and dee["2.2"] == 0 and dee["3.2"] == 0 and dee["3.5"] == 4  # step 3 ran on the reference
    assert {
        q: dee[q]
        for q in ("1.1", "1.2", "2.3", "2.4", "3.1", "3.3", "3.4", "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7")
    } == {
        "1.1": 9,
        "1.2": 4,
        "2.3": 4,
        "2.4": 3,
        "3.1": 5,
        "3.3": 6,
        "3.4": 4,
        "4.1": 2,
        "4.2": 4,
        "4.3": 4,
        "4.4": 4,
        "4.5": 4,
        "4.6": 4,
        "4.7": 4,
    }
    assert "NameError" in json.dumps(_report(results["dee"], "2.1"))


def test_a_fake_check_earns_nothing(graded):
    results, _, out = graded
    rep = _report(results["dee"], "3.2")
    assert rep["points"] == 0 and "call optimizer.step()" in json.dumps(rep)
    # a quiet failure costs its own question only, as a loud one does: step 3 ran on the lab's optimizer
    # step, says so in one visible line, and its results earn their points
    s3 = _report(results["dee"], "3.5")
    assert s3["points"] == 4, s3  # every point of question 3.5
    assert "ran with the lab's reference for optimizer_step (did not pass its check)" in results["dee"].status[NB3]
    assert "your `optimizer_step` did not pass its check" in (out / "runs" / "dee" / NB3).read_text()


def test_flags_name_the_reference_call_and_the_near_copy(graded):
    results, rows, _ = graded
    assert any("choose_variant" in f and "cptlab.lab.study" in f for f in results["dee"].flags), results["dee"].flags
    assert re.search(r"code \d+% similar to ada", rows["bo"]["flags"]), rows["bo"]["flags"]
    assert not any("cptlab" in f for f in results["ada"].flags)


def test_learner_code_cannot_read_the_solutions_or_pass_the_memory_cap(graded):
    results, _, out = graded
    assert results["dee"].points["4.6"] == 4  # its function found the solutions hidden and 8 GiB refused
    assert not (out / "runs" / "dee" / "LEAKED").exists()


def test_runs_use_the_learners_seed_and_the_instructors_preset(graded):
    _, _, out = graded
    s1 = json.loads((out / "runs" / "ada" / "step1_baseline.json").read_text())
    assert s1["preset"] == "smoke" and s1["seed"] == learner_seed("ada") != learner_seed("bo")


def test_feedback_pages_and_rubric_merge(graded):
    results, _, out = graded
    page = (out / "feedback" / "cy.html").read_text()
    assert "mistake: a mean of per-window perplexities" in page and "why points were lost" in page and "lr_at" in page
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    for r in sheet:
        r["score"] = "3" if r["learner"] == "ada" else ""
    with open(out / "rubric_filled.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(sheet)
    rows = {r["learner"]: r for r in merge_rubric(out, out / "rubric_filled.csv")}
    assert rows["ada"]["total"] == 100 and rows["ada"]["written_total"] == 15
    assert rows["cy"]["written_total"] == ""
    bad = [dict(r, score="7") if i == 0 else r for i, r in enumerate(sheet)]
    with open(out / "rubric_bad.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(bad)
    with pytest.raises(ValueError, match="score from 0 to 3"):
        merge_rubric(out, out / "rubric_bad.csv")


def test_shards_merge_into_the_same_gradebook(graded, tmp_path):
    from checkers.grading.classroom import merge_shards

    _, rows, out = graded
    data = json.loads((out / "grades.json").read_text())
    for k, part in enumerate((data["learners"][0::2], data["learners"][1::2]), start=1):
        (tmp_path / f"s{k}").mkdir()
        (tmp_path / f"s{k}" / "grades.json").write_text(json.dumps({**data, "learners": part}))
    merged = {r["learner"]: r for r in merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "all")}
    assert {k: v["auto_total"] for k, v in merged.items()} == {k: float(v["auto_total"]) for k, v in rows.items()}
    assert re.search(r"similar to ada", merged["bo"]["flags"])


def test_a_stopped_class_resumes_where_it_stopped(graded, tmp_path, monkeypatch, capfd):
    import checkers.grading.classroom as classroom

    _, rows, out = graded
    again = tmp_path / "grades"
    (again / "learners").mkdir(parents=True)
    for name in ("bo", "cy", "dee"):  # the grader was stopped after these three: no gradebook yet
        shutil.copy(out / "learners" / f"{name}.json", again / "learners")
    graded_now, real = [], classroom.grade_learner
    monkeypatch.setattr(classroom, "grade_learner", lambda f, *a, **k: graded_now.append(f.name) or real(f, *a, **k))
    grade_class(CLASS["submissions"], "smoke", again, **GRADING)
    assert graded_now == ["ada"]
    assert {r["learner"]: r for r in csv.DictReader(open(again / "grades.csv"))} == rows
    err = capfd.readouterr().err
    assert "3 of 4 learner(s) graded by an earlier run: kept" in err and "ada graded: 4/4 done" in err


def test_merging_takes_only_the_answer_cells():
    pristine = nbformat.read(NOTEBOOK_DIR / NB1, as_version=4)
    submitted = _sol(NB1)
    for cell in submitted.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = "PRESET = 'gpt2'"
    merge = merge_answers(pristine, submitted)
    params = next(c for c in merge.notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert 'PRESET = "auto"' in params.source
    assert any("math.exp(nll_sum / n_scored)" in src for src in merge.answers.values())


def test_matching_reports_a_cell_with_two_functions_and_a_cell_with_none():
    pristine = nbformat.read(NOTEBOOK_DIR / NB2, as_version=4)
    sub = _sol(NB2)
    cells = [c for c in sub.cells if "solution" in c.metadata.get("tags", [])]
    cells[0].source = cells[0].source + "\n\n" + cells[1].source  # pack_documents and split_documents in one cell
    cells[1].source = "HELPER = 3\n"
    merge = merge_answers(pristine, sub)
    assert any("defines pack_documents, split_documents" in n for n in merge.notices)
    assert any("define none of the functions asked" in n for n in merge.notices)
    code = [c.source for c in merge.notebook.cells if "solution" in c.metadata.get("tags", [])]
    assert (
        "HELPER = 3" in code[0] and "def split_documents" in code[0] and "defined in an earlier answer cell" in code[1]
    )
