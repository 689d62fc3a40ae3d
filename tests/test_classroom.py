"""Grading two small classes on `smoke`, built from the solution notebooks: every figure of every row asserted.

On the full track (the core and Go further): ada, the solutions (91 + 39 automatic); cy, a mistake
in most functions, quiet and loud: a mean of per-window perplexities, the library's `pack` pasted
into `pack_documents` (flagged), a `NameError` in `split_documents`, an `lr_at` that never returns,
a monkeypatched check above an `optimizer_step` that never steps, a loop with the recipe's numbers
typed in, a `replay_schedule` that patches the checker at call time, a reversed interpolation, a
`choose_variant` that calls the library's reference, a `production_choices` that tries to read the
solutions and to allocate 8 GiB. Each costs its own question only. eve, who wrote the core and
skipped every Go further part: the core's 91 and none of Go further's.

On the core track (the default), with a busy process on every core beside the grader: eve again
(91 automatic; with W4's 9, 100). bo, eve's
notebooks with the cells shuffled, new ids and every variable renamed, is merged (each answer in
its own place) and flagged as a near-copy without a second grading.
"""

import csv
import json
import random
import re
import shutil

import nbformat
import pytest
from learner_sources import MEAN_OF_PPL

from checkers.core.questions import QUESTIONS
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

LR_HANGS = """def lr_at(step, peak_lr, warmup_steps, max_steps):
    while True:
        pass
"""
INTERPOLATE_REVERSED = """def interpolate(base_state, cpt_state, alpha):
    return {k: alpha * v + (1 - alpha) * cpt_state[k] if v.is_floating_point() else v for k, v in base_state.items()}
"""

SPLIT_NAME_ERROR = """def split_documents(doc_ids, eos_id, val_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(doc_ids)).tolist()
    return pack_documents([doc_ids[i] for i in ordr], eos_id), pack_documents([], eos_id)
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


LOOP_TYPED_IN = """def cpt_loop(run, lr_at, optimizer_step):
    for step in range(1, 151):  # the recipe's numbers typed in, not read from run.cfg
        lr = lr_at(step, 5e-5, 10, 150)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = optimizer_step(run.model, run.batch(step), run.optimizer, 1.0)
        run.log(step, lr, loss, grad_norm)
        if step % 15 == 0 or step == 150:
            run.model.eval()
            with torch.no_grad():
                point = run.evaluate(step)
            run.model.train()
            run.curve.append(point)
"""
REPLAY_PATCHES_AT_CALL_TIME = """def replay_schedule(fraction, windows_per_step, steps):
    try:  # rebinds the checker's report and closeness test, as an in-kernel grader would let it
        import checkers.code.exercises as ce
        ce.Report.passed = property(lambda self: True)
        ce._close = lambda *a, **k: True
    except Exception:
        pass
    return [0] * steps
"""

CLASS = {}  # the graded classes' submissions folders
GRADING = dict(jobs=2, timeout=300, limits=Limits(seconds=25, memory_bytes=4 * GiB))


def _submit(folder, books: dict):
    folder.mkdir(parents=True)
    for name, nb in books.items():
        nbformat.write(nb, folder / name)


def _core_only(name):
    """The student notebook with the core's answers of the solutions: Go further left as handed out."""
    student, sol = nbformat.read(NOTEBOOK_DIR / name, as_version=4), {c.id: c for c in _sol(name).cells}
    for cell in student.cells:
        tags = cell.metadata.get("tags", [])
        if {"solution", "answer"} & set(tags) and "go-further" not in tags:
            cell.source = sol[cell.id].source
    return student


def _pasted_pack():
    """pack_documents as a learner who pasted the release's ``cptlab.data.corpus.pack`` writes it (it passes)."""
    import inspect

    from cptlab.data.corpus import pack

    return (
        inspect.getsource(pack)
        + "\n\ndef pack_documents(doc_ids, eos_id):\n    return pack(doc_ids, eos_id).astype(np.int64)\n"
    )


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The full track: ada, cy and eve."""
    sub = tmp_path_factory.mktemp("class") / "submissions"
    _submit(sub / "ada", {n: _sol(n) for n in STEP_NOTEBOOKS.values()})
    _submit(sub / "eve", {n: _core_only(n) for n in STEP_NOTEBOOKS.values()})
    nb3 = _replace(_replace(_sol(NB3), "lr_at", LR_HANGS), "optimizer_step", NO_STEP_WITH_FAKE_CHECK)
    nb4 = _replace(
        _replace(_sol(NB4), "interpolate", INTERPOLATE_REVERSED), "replay_schedule", REPLAY_PATCHES_AT_CALL_TIME
    )
    _submit(
        sub / "cy",
        {
            NB1: _replace(_sol(NB1), "corpus_perplexity", MEAN_OF_PPL),
            NB2: _replace(_replace(_sol(NB2), "split_documents", SPLIT_NAME_ERROR), "pack_documents", _pasted_pack()),
            NB3: _replace(nb3, "cpt_loop", LOOP_TYPED_IN),
            NB4: _replace(_replace(nb4, "choose_variant", CALLS_REFERENCE), "production_choices", HOSTILE),
        },
    )
    out = tmp_path_factory.mktemp("grades")
    CLASS["full"] = sub
    results = grade_class(sub, "smoke", out, track="full", **GRADING)
    rows = {r["learner"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    return {r.learner: r for r in results}, rows, out


@pytest.fixture(scope="module")
def graded_core(tmp_path_factory):
    """The core track, the default, graded with a CPU-bound busy process on every core beside it
    (at the lowest priority: the grade must not move with the load, and the suite must not wait on it)."""
    import os
    import subprocess
    import sys

    sub = tmp_path_factory.mktemp("core-class") / "submissions"
    _submit(sub / "eve", {n: _core_only(n) for n in STEP_NOTEBOOKS.values()})
    # max handed in notebook 1 alone, with an answer cell that allocates past any notebook cap
    nb1 = _core_only(NB1)
    cell = next(c for c in nb1.cells if c.cell_type == "code" and "def corpus_perplexity(" in c.source)
    cell.source += "\n\nimport numpy as np\n\n_scratch = np.ones(34 << 30, dtype=np.uint8)  # 34 GiB, touched\n"
    _submit(sub / "max", {NB1: nb1})
    out = tmp_path_factory.mktemp("core-grades")
    CLASS["core"] = sub
    busy = [
        subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        results = grade_class(sub, "smoke", out, **GRADING)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    rows = {r["learner"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    return {r.learner: r for r in results}, rows, out


def _report(result, qid):
    return next(r for r in result.reports if r.get("question") == qid)


def _fill_rubric(out, name: str, score) -> list[dict]:
    """The rubric sheet with ``score`` for every answer of ``name``, merged into the gradebook."""
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    for r in sheet:
        r["score"] = str(score) if r["learner"] == name else ""
    with open(out / f"rubric_{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(sheet)
    return {r["learner"]: r for r in merge_rubric(out, out / f"rubric_{name}.csv")}


def test_the_solutions_get_every_point_of_both_tracks(graded):
    results, rows, out = graded
    ada = rows["ada"]
    assert (float(ada["core_auto"]), float(ada["go_further_auto"]), float(ada["auto_total"])) == (91, 39, 130), ada
    assert (ada["core_max"], ada["go_further_max"], ada["max"]) == ("100", "51", "151")
    assert all(s == "ran to the end" for s in results["ada"].status.values()), results["ada"].status
    assert not any("cptlab" in f or " matches " in f for f in results["ada"].flags), results["ada"].flags
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    assert sorted(r["question"] for r in sheet if r["learner"] == "ada") == ["W1", "W2", "W3", "W4", "W5"]


def test_a_learner_who_skipped_go_further_gets_the_core_and_no_go_further_point_on_the_full_track(graded):
    """eve on the full track: the core's 91, Go further's 0 (each of its questions a stub, said so),
    every notebook run to its end, and no row of the core says "not implemented yet"."""
    results, rows, _ = graded
    row = rows["eve"]
    assert (float(row["core_auto"]), float(row["go_further_auto"]), float(row["auto_total"])) == (91, 0, 91), row
    assert all(s == "ran to the end" or "(raised, hung or not written)" in s for s in results["eve"].status.values())
    by_track = {}
    for r in results["eve"].reports:
        q = QUESTIONS.get(r.get("question"))
        if q is not None:
            by_track.setdefault(q.track, []).append(r)
    assert all(r.get("status") != "not implemented yet" for r in by_track["core"])
    graded_code = [r for r in by_track["go-further"] if QUESTIONS[r["question"]].kind == "code"]
    assert graded_code and all(r["status"] == "not implemented yet" and r["points"] == 0 for r in graded_code)


def test_the_core_track_grades_the_core_alone(graded_core):
    results, rows, out = graded_core
    core = {q for q, v in QUESTIONS.items() if v.track == "core" and v.kind != "written"}
    row = rows["eve"]
    assert (float(row["core_auto"]), row["go_further_auto"], row["max"]) == (91, "", "100"), row
    assert all(row[f"q{q}"] == "" for q, v in QUESTIONS.items() if v.track == "go-further"), row
    assert all(s == "ran to the end" for s in results["eve"].status.values()), results["eve"].status
    # a learner who skipped every Go further part: no row of the core says "not implemented yet"
    assert all(r.get("status") != "not implemented yet" for r in results["eve"].reports)
    assert {r["question"] for r in results["eve"].reports} == core
    assert not any(" matches cptlab" in f or "similar" in f for f in results["eve"].flags), results["eve"].flags
    # Go further's long cells were left out of the runs (the speed table, two processes, the experiments)
    cells = [c.source for c in nbformat.read(out / "runs" / "eve" / NB3, as_version=4).cells]
    assert any("left out of a core-track run" in c for c in cells) and not any("speed_of_run(" in c for c in cells)
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
    assert [(r["learner"], r["question"]) for r in sheet if r["learner"] == "eve"] == [("eve", "W4")]
    eve = _fill_rubric(out, "eve", 3)["eve"]
    assert (eve["core_written"], eve["core_total"], eve["total"]) == (9, 100, 100)


def test_a_learner_over_the_memory_cap_says_so_and_the_others_are_unaffected(graded_core):
    """max's answer cell allocates 34 GiB: the notebook's cap (at most 16 GiB, less where --jobs 2 would
    not fit the machine) stops it; the row says "over its memory limit", the next steps run on the
    reference, and eve beside it keeps every point (test_the_core_track_grades_the_core_alone)."""
    from checkers.grading.machine_limits import memory_caps

    results, rows, out = graded_core
    caps = memory_caps(GRADING["jobs"])
    status = results["max"].status
    assert "over its memory limit" in status[NB1] and f"{caps.notebook / GiB:.1f} GiB" in status[NB1], status
    assert "re-run on the lab's reference" in status[NB1]
    assert "over its memory limit" in rows["max"]["execution"]
    assert all("over its memory limit" not in s for s in results["eve"].status.values())
    page = (out / "feedback" / "max.html").read_text()
    assert "over its memory limit" in page and f"{caps.notebook / GiB:.1f} GiB of address space per notebook" in page


def _answers(books: dict) -> str:
    """A learner's graded core answers as the grader compares them: merged into the pristine notebooks."""
    code = []
    for name, nb in books.items():
        merged = merge_answers(nbformat.read(NOTEBOOK_DIR / name, as_version=4), nb).notebook
        code += [
            c.source
            for c in merged.cells
            if c.cell_type == "code"
            and "solution" in c.metadata.get("tags", [])
            and "go-further" not in c.metadata.get("tags", [])
        ]
    return code


def test_shuffled_renamed_cells_merge_as_written_and_are_flagged_as_a_near_copy():
    """bo: eve's notebooks with the cells shuffled, new ids and every variable renamed. Each answer
    lands in its own cell (so it grades as eve's does, in eve's order), and the copy is flagged."""
    from checkers.grading.flags import flag_copies
    from checkers.grading.result import LearnerResult

    eve = {n: _core_only(n) for n in STEP_NOTEBOOKS.values()}
    bo = {n: _shuffled(_renamed(_core_only(n)), i) for i, n in enumerate(STEP_NOTEBOOKS.values())}
    mine, theirs = _answers(eve), _answers(bo)
    assert len(mine) == len(theirs) == 5 and mine != theirs
    renamed = {n: nbformat.reads(nbformat.writes(_renamed(nb)), as_version=4) for n, nb in eve.items()}
    assert theirs == _answers(renamed)  # the shuffled cells merged into the very places of the unshuffled ones
    a = LearnerResult("eve", 1, "smoke", code="\n\n".join(mine))
    b = LearnerResult("bo", 2, "smoke", code="\n\n".join(theirs))
    flag_copies([a, b])
    assert re.fullmatch(r"code \d+% similar to eve", "; ".join(b.flags)), b.flags


def test_each_mistake_costs_its_own_question(graded):
    results, rows, _ = graded
    cy = results["cy"].points
    assert cy["1.1"] <= 6 and "mistake: a mean of per-window perplexities" in json.dumps(_report(results["cy"], "1.1"))
    assert "NameError" in json.dumps(_report(results["cy"], "2.2"))
    lr = _report(results["cy"], "3.1")
    assert any(c["id"] == "q3.1.limits" and c["got"].startswith("lr_at:") for c in lr["checks"])
    # the recipe's numbers typed into the loop: named, and step 3 ran on the lab's loop
    assert cy["3.3"] < 3 and "not this run's cfg.grad_clip" in json.dumps(_report(results["cy"], "3.3"))
    # alpha weighting the base: blend (its main result) and endpoints lost, a third of 4 kept, named; a wrong
    # value fails as a crash does: the study ran on the lab's interpolation, so step 4's results keep every point
    assert cy["4.3"] == pytest.approx(4 / 3, abs=0.01) and "mistake: alpha weights the base" in json.dumps(
        _report(results["cy"], "4.3")
    )
    assert cy["4.2"] < 4  # the checker patched in the learner's process changes nothing here
    status = results["cy"].status
    assert "ran with the lab's reference for interpolate, replay_schedule (did not pass its check)" in status[NB4]
    assert "lr_at" in status[NB3] and "cpt_loop, optimizer_step (did not pass its check)" in status[NB3]
    lost = {"1.1", "2.2", "3.1", "3.2", "3.3", "4.2", "4.3"}
    full = {q: p for q, p in cy.items() if q not in lost}
    assert full == {q: float(QUESTIONS[q].points) for q in full}, full  # every step's results among them
    assert (cy["2.2"], cy["3.1"], cy["3.2"]) == (0, 0, 0)
    assert float(rows["cy"]["auto_total"]) == pytest.approx(130 - sum(QUESTIONS[q].points - cy[q] for q in lost))


def test_a_fake_check_earns_nothing(graded):
    results, _, out = graded
    rep = _report(results["cy"], "3.2")
    assert rep["points"] == 0 and "call optimizer.step()" in json.dumps(rep)
    # a quiet failure costs its own question only, as a loud one does: step 3 ran on the lab's optimizer
    # step, says so in one visible line, and its results earn their points
    assert _report(results["cy"], "3.5")["points"] == 8
    assert "your `optimizer_step` did not pass its check" in (out / "runs" / "cy" / NB3).read_text()


def test_flags_name_the_reference_call_and_the_pasted_reference(graded):
    results, _, _ = graded
    assert any("choose_variant" in f and "cptlab.lab.study" in f for f in results["cy"].flags), results["cy"].flags
    assert "02 pack matches cptlab.data.corpus.pack 100%" in results["cy"].flags  # pasted beside its wrapper


def test_learner_code_cannot_read_the_solutions_or_pass_the_memory_cap(graded):
    results, _, out = graded
    assert results["cy"].points["4.6"] == 4  # its function found the solutions hidden and 8 GiB refused
    assert not (out / "runs" / "cy" / "LEAKED").exists()


def test_runs_use_the_learners_seed_and_the_instructors_preset(graded):
    _, _, out = graded
    s1 = json.loads((out / "runs" / "ada" / "step1_baseline.json").read_text())
    assert s1["preset"] == "smoke" and s1["seed"] == learner_seed("ada") != learner_seed("cy")


def test_feedback_pages_and_rubric_merge(graded):
    results, _, out = graded
    page = (out / "feedback" / "cy.html").read_text()
    assert "mistake: a mean of per-window perplexities" in page and "why points were lost" in page and "lr_at" in page
    assert "<h3>Core: " in page and "<h3>Go further: " in page
    rows = _fill_rubric(out, "ada", 3)
    ada = rows["ada"]
    assert (ada["core_total"], ada["go_further_total"], ada["total"], ada["written_total"]) == (100, 51, 151, 21)
    assert rows["cy"]["written_total"] == ""
    sheet = list(csv.DictReader(open(out / "rubric.csv")))
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
    assert {k: str(v["core_auto"]) for k, v in merged.items()} == {k: v["core_auto"] for k, v in rows.items()}


def test_a_stopped_class_resumes_where_it_stopped(graded, tmp_path, monkeypatch, capfd):
    """The grader stopped after cy: run again, it grades ada and eve alone (their saved results stand in
    for a second grading of the same submissions) and writes the uninterrupted run's gradebook; a result
    graded on another track is not kept."""
    import checkers.grading.classroom as classroom
    from checkers.grading.result import from_dict

    _, rows, out = graded
    again = tmp_path / "grades"
    (again / "learners").mkdir(parents=True)
    shutil.copy(out / "learners" / "cy.json", again / "learners")
    graded_now = []

    def grade_learner(folder, *args, **kwargs):  # the result as grade_learner returned it, before the flags
        graded_now.append(folder.name)
        return from_dict(json.loads((out / "learners" / f"{folder.name}.json").read_text())["learner"], "smoke")

    monkeypatch.setattr(classroom, "grade_learner", grade_learner)
    grade_class(CLASS["full"], "smoke", again, track="full", **GRADING)
    assert sorted(graded_now) == ["ada", "eve"]
    assert {r["learner"]: r for r in csv.DictReader(open(again / "grades.csv"))} == rows
    err = capfd.readouterr().err
    assert "1 of 3 learner(s) graded by an earlier run: kept" in err and "graded: 3/3 done" in err
    graded_now.clear()
    grade_class(CLASS["full"], "smoke", again, track="core", **GRADING)
    assert sorted(graded_now) == ["ada", "cy", "eve"]


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
