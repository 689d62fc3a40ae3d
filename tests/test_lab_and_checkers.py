"""CI runs the four notebooks headless on the smoke preset, then the checkers on what they wrote;
tampered results must fail the matching check, and `grade` must exit non-zero."""

import json
import math
import shutil
from pathlib import Path

import pytest

from checkers import check_step1, check_step2, check_step3, check_step4
from checkers.grading.grade import main as grade_main
from cptlab.core.results import MissingStepError
from cptlab.lab.steps import run_step2


def test_notebooks_ran_and_every_check_passes(lab_run, capsys):
    for name in ("01_baseline", "02_corpus", "03_cpt", "04_tradeoff"):
        nb = json.loads((lab_run / f"{name}.ipynb").read_text())
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no figure"
    assert len(list((lab_run / "plots").glob("*.png"))) >= 4
    for check in (check_step1, check_step2, check_step3, check_step4):
        report = check(lab_run)
        assert report.passed, str(report)
        assert "all checks passed" in report._repr_html_()
    assert grade_main(["grade", str(lab_run)]) == 0
    out = capsys.readouterr().out
    assert "1/1 run(s) passed every check" in out


def test_results_follow_the_contract(lab_run):
    s1 = json.loads((lab_run / "step1_baseline.json").read_text())
    s4 = json.loads((lab_run / "step4_tradeoff.json").read_text())
    assert s4["code_ppl_drop"] == pytest.approx(1 - s4["adapted_code_ppl"] / s1["baseline_code_ppl"])
    assert s4["forgetting_ratio"] == pytest.approx(s4["adapted_general_ppl"] / s1["baseline_general_ppl"])
    assert s4["code"]["tokens"] == s1["code"]["tokens"]
    for key in ("preset", "seed", "versions", "device", "base_model"):
        assert key in s1
    adapted = lab_run / s4["adapted_model"]
    assert list(adapted.glob("*.safetensors")) and (adapted / "tokenizer.json").exists()


def _tampered(lab_run, tmp_path, step_file, edit):
    run = tmp_path / "tampered"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb"))
    path = run / step_file
    edit(path)
    return run


def _edit_json(fn):
    def edit(path):
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    return edit


def test_edited_forgetting_ratio_fails_and_is_named(lab_run, tmp_path, capsys):
    run = _tampered(
        lab_run,
        tmp_path,
        "step4_tradeoff.json",
        _edit_json(lambda d: d.update(forgetting_ratio=d["forgetting_ratio"] * 0.9)),
    )
    report = check_step4(run)
    # the edited ratio no longer follows from its perplexities, nor lies in its own interval
    assert {c.id for c in report.failures} == {"s4.forgetting_ratio_interval", "s4.forgetting_ratio_consistent"}
    assert grade_main(["grade", str(run), "--csv", str(tmp_path / "g.csv")]) == 1
    assert "s4.forgetting_ratio_consistent" in capsys.readouterr().out
    assert "s4.forgetting_ratio_consistent" in (tmp_path / "g.csv").read_text()


def test_removed_step_log_fails(lab_run, tmp_path):
    run = _tampered(lab_run, tmp_path, "step3_cpt.json", _edit_json(lambda d: d.pop("log")))
    report = check_step3(run)
    failed = {c.id: c for c in report.failures}
    assert "s3.steps" in failed and "'log' is missing" in failed["s3.steps"].got
    assert "s3.hparams" not in failed  # only what depends on the log fails


def test_non_finite_perplexity_fails(lab_run, tmp_path):
    def edit(path):
        path.write_text(path.read_text().replace('"baseline_code_ppl": ', '"baseline_code_ppl": NaN, "x": ', 1))

    run = _tampered(lab_run, tmp_path, "step1_baseline.json", edit)
    failed = {c.id for c in check_step1(run).failures}
    assert {"s1.code_ppl_finite", "s1.code_ppl_from_raw"} <= failed and "s1.general_ppl_finite" not in failed


def test_truncated_json_fails_without_traceback(lab_run, tmp_path):
    run = _tampered(lab_run, tmp_path, "step2_corpus.json", lambda p: p.write_text(p.read_text()[:200]))
    report = check_step2(run)
    assert not report.passed and report.failures[0].id == "s2.results" and "not valid JSON" in report.failures[0].got


def test_wrong_schedule_is_caught(lab_run, tmp_path):
    def bump(d):
        d["log"][5]["lr"] *= 1.5

    run = _tampered(lab_run, tmp_path, "step3_cpt.json", _edit_json(bump))
    failed = {c.id: c for c in check_step3(run).failures}
    assert "s3.lr_schedule" in failed and "step 6" in failed["s3.lr_schedule"].got


def test_missing_previous_step_says_which_notebook(tmp_path):
    with pytest.raises(MissingStepError, match="01_baseline.ipynb"):
        run_step2(tmp_path)
    report = check_step3(tmp_path)
    assert not report.passed and "03_cpt.ipynb" in report.failures[0].hint


def test_study_is_complete_and_honest(lab_run):
    s4 = json.loads((lab_run / "step4_tradeoff.json").read_text())
    study = s4["study"]
    choices = [v["choice"] for v in study["variants"]]
    assert choices.count("replay") == 3 and "lora" in choices and "pure_cpt" in choices
    grid = {v["alpha"]: v for v in study["variants"] if v["choice"] == "interpolation"}
    assert grid[0.0]["code_ppl"] == pytest.approx(s4["baseline_code_ppl"], rel=1e-3)
    assert grid[1.0]["general_ppl"] == pytest.approx(s4["adapted_general_ppl"], rel=1e-3)
    lora = next(v for v in study["variants"] if v["choice"] == "lora")
    assert lora["base_sha256_before"] == lora["base_sha256_after"] and lora["trainable_params"] < lora["total_params"]
    assert (lab_run / "plots" / "step4_tradeoff.png").exists() and (
        lab_run / "plots" / "step4_forgetting_curve.png"
    ).exists()


def test_tampered_study_fails_the_matching_check(lab_run, tmp_path):
    def edit(d):
        lora = next(v for v in d["study"]["variants"] if v["choice"] == "lora")
        lora["base_sha256_after"] = "0" * 64
        others = [v["name"] for v in d["study"]["variants"] if v["name"] != d["study"]["recommendation"]["name"]]
        d["study"]["recommendation"]["name"] = others[0]

    run = _tampered(lab_run, tmp_path, "step4_tradeoff.json", _edit_json(edit))
    failed = {c.id for c in check_step4(run).failures}
    assert failed == {"s4.lora_base_frozen", "s4.recommendation"}


def test_verify_passes_on_an_honest_run(lab_run, capsys):
    assert grade_main(["grade", "--verify", str(lab_run)]) == 0
    out = capsys.readouterr().out
    assert "5. verify" in out and "1/1 run(s) passed every check" in out


def test_verify_catches_a_consistent_edit_of_a_perplexity(lab_run, tmp_path, capsys):
    def lower(d):
        d["baseline_general_ppl"] *= 0.8
        d["general"]["nll_sum"] = math.log(d["baseline_general_ppl"]) * d["general"]["tokens"]

    run = _tampered(lab_run, tmp_path, "step1_baseline.json", _edit_json(lower))
    from checkers.verify.verify import verify

    failed = {c.id: c for c in verify(run).failures}
    assert set(failed) == {"v.manifest", "v.base_model"}
    assert "step1_baseline.json" in failed["v.manifest"].got
    assert grade_main(["grade", "--verify", str(run)]) == 1
    assert "v.base_model" in capsys.readouterr().out


def test_verify_catches_a_swapped_adapted_model(lab_run, tmp_path):
    from checkers.verify.verify import verify

    s1 = json.loads((lab_run / "step1_baseline.json").read_text())
    run = _tampered(
        lab_run,
        tmp_path,
        "models/adapted/model.safetensors",
        lambda p: shutil.copyfile(Path(s1["base_model"]) / "model.safetensors", p),
    )
    failed = {c.id for c in verify(run).failures}
    assert failed == {"v.manifest", "v.adapted_model"}


def test_results_from_another_run_are_caught(lab_run, tmp_path):
    run = _tampered(lab_run, tmp_path, "step3_cpt.json", _edit_json(lambda d: d.update(run_id="0" * 32)))
    assert "s3.same_run" in {c.id for c in check_step3(run).failures}


def test_a_retention_floor_stop_is_graded_as_such(lab_run, tmp_path):
    def stop(d):
        d["log"] = d["log"][:20]
        d["floor"]["stopped_at_step"] = 20

    run = _tampered(lab_run, tmp_path, "step3_cpt.json", _edit_json(stop))
    failed = {c.id for c in check_step3(run).failures}
    assert "s3.steps" not in failed and "s3.cosine_decay" not in failed
    run2 = _tampered(lab_run, tmp_path / "b", "step3_cpt.json", _edit_json(lambda d: d.update(log=d["log"][:20])))
    assert "s3.steps" in {c.id for c in check_step3(run2).failures}  # a short log without a floor stop still fails


def test_curve_ends_at_the_headline_and_every_number_has_its_interval(lab_run):
    s1 = json.loads((lab_run / "step1_baseline.json").read_text())
    s3 = json.loads((lab_run / "step3_cpt.json").read_text())
    s4 = json.loads((lab_run / "step4_tradeoff.json").read_text())
    last = s3["curve"][-1]
    # the same tokens, protocol and weights (the saved model reloaded): equal to floating point
    assert (last["code_ppl"], last["general_ppl"]) == (s4["adapted_code_ppl"], s4["adapted_general_ppl"])
    assert (last["code_ppl_drop"], last["forgetting_ratio"]) == (s4["code_ppl_drop"], s4["forgetting_ratio"])
    assert last["code_tokens"] == s1["code"]["tokens"] and last["general_tokens"] == s1["general"]["tokens"]
    for rec, point in (
        (s1["code"]["interval"], s1["baseline_code_ppl"]),
        (s1["general"]["interval"], s1["baseline_general_ppl"]),
        (s4["code_ppl_drop_ci"], s4["code_ppl_drop"]),
        (s4["forgetting_ratio_ci"], s4["forgetting_ratio"]),
    ):
        assert rec["low"] <= point <= rec["high"] and rec["n_units"] >= 2
    for v in s4["study"]["variants"]:  # (interp a=0 is the base model: 0 against the learner's baseline, to rounding)
        assert v["code_ppl_drop_ci"]["low"] - 1e-4 <= v["code_ppl_drop"] <= v["code_ppl_drop_ci"]["high"] + 1e-4


@pytest.mark.parametrize(
    "key, cid",
    [("code_ppl_drop_ci", "s4.code_ppl_drop_interval"), ("forgetting_ratio_ci", "s4.forgetting_ratio_interval")],
)
def test_an_interval_that_misses_its_estimate_fails(lab_run, tmp_path, key, cid):
    def shift(d):
        width = d[key]["high"] - d[key]["low"]
        d[key]["low"], d[key]["high"] = d[key]["high"] + 0.01, d[key]["high"] + 0.01 + width

    report = check_step4(_tampered(lab_run, tmp_path, "step4_tradeoff.json", _edit_json(shift)))
    assert cid in [c.id for c in report.failures]


def test_an_interval_that_holds_its_estimate_but_not_its_sums_fails(lab_run, tmp_path):
    def widen(d):
        d["code"]["interval"]["low"] *= 0.5  # still holds the estimate, but is not what the sums give

    report = check_step1(_tampered(lab_run, tmp_path, "step1_baseline.json", _edit_json(widen)))
    assert [c.id for c in report.failures] == ["s1.code_interval"]


def test_a_run_folder_from_before_the_intervals_asks_to_rerun_step_3(lab_run, tmp_path):
    """The format of earlier cptlab: no per-document sums, no intervals, a curve on 8,192 tokens."""
    run = tmp_path / "old"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb"))

    def rewrite(name, fn):
        d = json.loads((run / name).read_text())
        fn(d)
        (run / name).write_text(json.dumps(d))

    def old1(d):
        for k in ("code", "general"):
            d[k].pop("units"), d[k].pop("interval")
        d["config"].pop("split_seed")
        d["config"]["curve_max_tokens"] = 2048

    def old3(d):
        d["curve_protocol"] = {"every": d["curve_protocol"]["every"], "max_tokens": 2048, "block_size": 64}
        for p in d["curve"]:
            for k in [k for k in p if k.endswith("_units") or k.endswith("_ci")]:
                p.pop(k)

    def old4(d):
        for k in ("code", "general"):
            d[k].pop("units"), d[k].pop("interval")
        d.pop("code_ppl_drop_ci"), d.pop("forgetting_ratio_ci"), d.pop("study")

    rewrite("step1_baseline.json", old1)
    rewrite("step3_cpt.json", old3)
    rewrite("step4_tradeoff.json", old4)
    assert check_step1(run).passed and check_step2(run).passed
    for report, cid in ((check_step3(run), "s3.curve_on_headline_tokens"), (check_step4(run), "s4.intervals")):
        failed = {c.id: c for c in report.failures}
        assert cid in failed and "re-run step 3" in failed[cid].hint
    # and re-running step 3 then step 4 in that folder makes it whole again
    from cptlab.lab.steps import run_step3, run_step4

    run_step3(run, progress=False)
    run_step4(run, progress=False)
    assert check_step3(run).passed, str(check_step3(run))
    s4 = json.loads((run / "step4_tradeoff.json").read_text())
    assert s4["code_ppl_drop_ci"]["low"] <= s4["code_ppl_drop"] <= s4["code_ppl_drop_ci"]["high"]
    from cptlab.lab.study import run_study

    run_study(run, progress=False)  # what notebook 4 runs after step 4
    report = check_step4(run)
    assert report.passed, str(report)
    assert {
        "s4.code_ppl_drop_interval",
        "s4.forgetting_ratio_interval",
        "s4.curve_ends_at_headline",
        "s4.study_intervals",
    } <= {c.id for c in report.checks}


def test_the_study_is_built_from_the_learners_schedule_interpolation_and_lora(lab_run, tmp_path):
    """Notebook 4's functions build the study: wrong ones change its numbers, and the results
    checks see what they did."""
    from peft import LoraConfig

    from cptlab.lab.study import run_study

    run = tmp_path / "run"
    shutil.copytree(lab_run, run)
    before = {v["name"]: v for v in json.loads((run / "step4_tradeoff.json").read_text())["study"]["variants"]}
    study = run_study(
        run,
        progress=False,
        schedule_fn=lambda fraction, windows, steps: [0] * steps,  # rounded per step: no English at all
        interpolate_fn=lambda base, cpt, alpha: {k: alpha * v + (1 - alpha) * cpt[k] for k, v in base.items()},
        lora_fn=lambda r, alpha: LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    after = {v["name"]: v for v in study["variants"]}
    replay = [n for n, v in after.items() if v["choice"] == "replay"]
    assert replay and all(after[n]["replay_windows"] == 0 and before[n]["replay_windows"] > 0 for n in replay)
    assert all(after[n]["code_ppl"] != before[n]["code_ppl"] for n in replay)
    lora = next(n for n, v in after.items() if v["choice"] == "lora")
    assert after[lora]["lora_modules"] == ["c_attn"] and after[lora]["code_ppl"] != before[lora]["code_ppl"]
    assert after["interp a=0"]["code_ppl"] == pytest.approx(before["interp a=1"]["code_ppl"], rel=1e-6)
    failed = {c.id for c in check_step4(run).failures}
    assert {"s4.replay_share", "s4.interp_endpoints"} <= failed, failed


def test_the_speed_table_uses_the_learners_flops_and_mfu_and_compares_precisions(lab_run):
    from cptlab.lab.speed import compare_precisions, speed_of_run, speed_table
    from cptlab.speed.flops import flops_per_token

    ref = speed_of_run(lab_run)
    forward_only = speed_of_run(lab_run, flops_fn=lambda m, b: flops_per_token(m, b) / 3)
    # the peak is measured again on each call (timing noise): the MFU is the learner's FLOPs over that peak
    assert forward_only["mfu"] == pytest.approx(
        forward_only["tokens_per_second"] * forward_only["flops_per_token"] / forward_only["peak_flops"]
    )
    assert forward_only["flops_per_token"] == pytest.approx(ref["flops_per_token"] / 3)
    assert speed_of_run(lab_run, mfu_fn=lambda tps, fpt, peaks, precision: 0.5)["mfu"] == 0.5  # the learner's MFU
    s3 = json.loads((lab_run / "step3_cpt.json").read_text())
    assert ref["tokens_per_second"] == s3["tokens_per_second"] and 0 < ref["mfu"]
    both = compare_precisions(lab_run, steps=2, eval_tokens=2048)
    assert set(both["rows"]) == {"fp32", "bf16"} and all(r["val_tokens"] > 0 for r in both["rows"].values())
    assert abs(both["ppl_difference"]) < 0.01  # autocast keeps the weights and the losses in float32
    assert "model FLOPs utilisation" in speed_table(ref, both)


def test_the_recipe_experiments_run_on_the_learners_schedule(lab_run, tmp_path):
    """A schedule that never moves the weights leaves every variant at the base model but the flat
    rate's (its rate after warm-up is the peak itself): the experiments train with the learner's."""
    from cptlab.lab.experiments import experiments_table, recipe_experiments

    run = tmp_path / "run"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb", "checkpoints"))
    exp = recipe_experiments(run, lr_fn=lambda step, peak, warmup, max_steps: 0.0, steps=6)
    rows = {v["name"]: v for v in exp["variants"]}
    assert set(rows) == {"recipe", "lr 6e-4", "no warm-up", "6e-4, no warm-up", "flat rate"}
    for name in ("recipe", "lr 6e-4", "no warm-up", "6e-4, no warm-up"):
        assert rows[name]["code_ppl_drop"] == pytest.approx(0.0, abs=1e-4), name  # bf16 sums: not bit-exact
        assert set(rows[name]["lrs"]) == {0.0}
    assert rows["flat rate"]["code_ppl_drop"] > 0.001 and rows["flat rate"]["code_ppl_drop_ci"]["low"] > 0
    assert json.loads((run / "experiments.json").read_text()) == exp
    assert "no gap the intervals can see" in experiments_table(exp)


def test_the_validation_split_is_the_presets_not_the_seeds(lab_run):
    import numpy as np

    from cptlab.core.config import get_config
    from cptlab.model.measure import StepSetup, code_corpus, resolve_base_model

    a, b, c = get_config("smoke", seed=7), get_config("smoke", seed=8), get_config("smoke", seed=7, split_seed=99)
    tok = StepSetup(a, resolve_base_model(a, progress=False)).tokenizer
    assert np.array_equal(code_corpus(a, tok)[0].val, code_corpus(b, tok)[0].val)
    assert not np.array_equal(code_corpus(a, tok)[0].val, code_corpus(c, tok)[0].val)


def test_the_tradeoff_plot_labels_coinciding_variants_once(lab_run):
    import matplotlib

    matplotlib.use("Agg")
    from cptlab.lab.plots import tradeoff_plot

    fig = tradeoff_plot(lab_run)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("pure CPT = interp a=1") == 1 and "interp a=1" not in texts and "pure CPT" not in texts


def test_step3_runs_on_the_learners_loop(lab_run, tmp_path):
    """A right loop written apart gives the lab's very log; a loop that never sets the rate trains at
    AdamW's initial rate on every step, and the results file shows it."""
    import torch

    from cptlab.lab.steps import run_step3
    from cptlab.model.loop import cpt_loop

    def own_loop(run, lr_at, optimizer_step):
        cfg, step = run.cfg, run.first_step
        while step <= cfg.max_steps:
            lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss, norm = optimizer_step(run.model, run.batch(step), run.optimizer, cfg.grad_clip)
            run.log(step, lr, loss, norm)
            if step % cfg.curve_every == 0 or step == cfg.max_steps:
                run.model.eval()
                with torch.no_grad():
                    run.curve.append(run.evaluate(step))
                run.model.train()
            step += 1

    def rate_never_set(run, lr_at, optimizer_step):
        cfg = run.cfg
        for step in range(run.first_step, cfg.max_steps + 1):
            lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
            loss, norm = optimizer_step(run.model, run.batch(step), run.optimizer, cfg.grad_clip)
            run.log(step, lr, loss, norm)
            if step == cfg.max_steps:
                run.curve.append(run.evaluate(step))

    runs = {}
    for name, loop in (("lab", cpt_loop), ("own", own_loop), ("wrong", rate_never_set)):
        run = tmp_path / name
        shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb", "checkpoints", "step3_*", "step4_*"))
        runs[name] = run_step3(run, progress=False, loop_fn=loop)
    lab, own, wrong = (runs[k] for k in ("lab", "own", "wrong"))
    assert [r["loss"] for r in own["log"]] == [r["loss"] for r in lab["log"]]
    assert [p["code_ppl"] for p in own["curve"]] == [p["code_ppl"] for p in lab["curve"]]
    assert own["hparams"]["implementation"]["loop"] == "own_loop"
    assert [r["loss"] for r in wrong["log"]][1:] != [r["loss"] for r in lab["log"]][1:]
    assert wrong["curve"][-1]["code_ppl"] != lab["curve"][-1]["code_ppl"]


def test_results_points_follow_each_checks_weight(lab_run):
    """Every weighted check exists (a typo would weigh nothing), the points add up to the question's,
    and a headline recomputed from raw sums weighs more than the file being readable."""
    from checkers.core.questions import QUESTIONS, RESULTS_WEIGHTS
    from checkers.results.steps import check_all

    reports = check_all(lab_run)
    ids = {c.id for r in reports for c in r.checks}
    assert set(RESULTS_WEIGHTS) <= ids, set(RESULTS_WEIGHTS) - ids
    for r in reports:
        assert sum(c.points for c in r.checks) == pytest.approx(QUESTIONS[r.question].points)
    points = {c.id: c.points for r in reports for c in r.checks}
    assert points["s1.code_ppl_from_raw"] == pytest.approx(4 * points["s1.results"])
    assert points["s4.study_from_raw"] > points["s4.replay_share"] > points["s4.same_run"]
