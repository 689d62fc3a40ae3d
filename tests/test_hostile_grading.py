"""Grading trusts nothing it is handed: hostile or broken run folders fail with a named check or
are refused, one bad folder never stops the others, and the gradebook is always written."""

import csv
import json
import os
import shutil

import pytest

from checkers import check_step1, check_step3
from checkers.core.safe_files import Unsafe, inside, read_json, safetensors_header
from checkers.grading.grade import main as grade_main


def _copy(lab_run, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb"))
    return run


def test_a_deeply_nested_results_file_fails_its_check(lab_run, tmp_path):
    run = _copy(lab_run, tmp_path)
    (run / "step1_baseline.json").write_text("[" * 100_000 + "]" * 100_000)
    report = check_step1(run)
    assert report.failures[0].id == "s1.results" and "nested too deeply" in report.failures[0].got
    (run / "step1_baseline.json").write_text("[1, 2]")
    report = check_step1(run)
    assert report.failures[0].id == "s1.results" and "holds a list, not a JSON object" in report.failures[0].got


def test_a_results_file_that_is_a_symlink_a_fifo_or_a_device_is_refused_unread(lab_run, tmp_path):
    for i, make in enumerate(
        [
            lambda p: p.symlink_to("/dev/zero"),
            lambda p: os.mkfifo(p),
            lambda p: p.symlink_to(lab_run / "step1_baseline.json"),
        ]
    ):
        run = _copy(lab_run, tmp_path, f"run{i}")
        target = run / "step1_baseline.json"
        target.unlink()
        make(target)
        failed = check_step1(run).failures
        assert failed[0].id == "s1.results" and ("symbolic link" in failed[0].got or "FIFO" in failed[0].got), failed[
            0
        ].got


def test_a_symlinked_weights_file_fails_the_model_check(lab_run, tmp_path):
    run = _copy(lab_run, tmp_path)
    w = run / "models" / "adapted" / "model.safetensors"
    w.unlink()
    w.symlink_to("/etc/passwd")
    failed = {c.id: c for c in check_step3(run).failures}
    assert "s3.adapted_model" in failed and "symbolic link" in failed["s3.adapted_model"].got
    run2 = _copy(lab_run, tmp_path, "run2")
    (run2 / "models" / "adapted" / "model.safetensors").write_text("not weights")
    failed = {c.id: c for c in check_step3(run2).failures}
    assert "s3.adapted_model" in failed and "not a safetensors file" in failed["s3.adapted_model"].got


def test_one_hostile_folder_does_not_stop_the_class(lab_run, tmp_path, capsys):
    good = _copy(lab_run, tmp_path, "good")
    bad = _copy(lab_run, tmp_path, "bad")
    (bad / "step2_corpus.json").unlink()
    os.mkfifo(bad / "step2_corpus.json")
    (bad / "step4_tradeoff.json").write_text("[" * 50_000)
    gone = tmp_path / "not-a-folder"
    code = grade_main(["grade", str(good), str(bad), str(gone), "--csv", str(tmp_path / "g.csv")])
    assert code == 1
    rows = {r["run_dir"]: r for r in csv.DictReader(open(tmp_path / "g.csv"))}
    assert rows[str(good)]["passed"] == "True"
    assert rows[str(bad)]["passed"] == "False" and "s2.results" in rows[str(bad)]["failed_checks"]
    assert rows[str(gone)]["passed"] == "False"


def test_the_manifest_never_hashes_outside_the_folder(lab_run, tmp_path):
    from checkers.verify.verify import verify

    run = _copy(lab_run, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["files"]["/dev/zero"] = "0" * 64
    m["files"]["../../etc/passwd"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(m))
    failed = {c.id: c for c in verify(run).failures}
    assert "v.manifest" in failed and "outside the run folder" in failed["v.manifest"].got


def test_safe_file_helpers(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert read_json(tmp_path, "a.json") == {"x": 1}
    with pytest.raises(Unsafe, match="outside"):
        inside(tmp_path, "../a.json")
    with pytest.raises(Unsafe, match="larger than"):
        read_json(tmp_path, "a.json", max_bytes=3)
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(Unsafe, match="not a safetensors file"):
        safetensors_header(tmp_path, "w.safetensors")


def _rehash(run):
    from cptlab.core.results import update_manifest

    update_manifest(run)


def _edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_a_fake_base_model_in_the_folder_is_not_believed(lab_run, tmp_path):
    from checkers.verify.verify import verify

    run = _copy(lab_run, tmp_path)
    fake = run / "models" / "base"
    shutil.copytree(run / "models" / "adapted", fake)  # a "base" that already knows code: a bigger drop
    _edit(run / "step1_baseline.json", lambda d: d.update(base_model=str(fake)))
    _rehash(run)
    failed = {c.id for c in verify(run).failures}
    assert failed == set(), failed  # the preset's own base model is used: the honest numbers still hold
    _edit(
        run / "step1_baseline.json",
        lambda d: (
            d.update(baseline_code_ppl=d["baseline_code_ppl"] * 1.3),
            d["code"].update(nll_sum=__import__("math").log(d["baseline_code_ppl"]) * d["code"]["tokens"]),
        ),
    )
    _rehash(run)
    assert "v.base_model" in {c.id for c in verify(run).failures}


def test_custom_code_models_and_a_root_crawl_are_refused(lab_run, tmp_path):
    from checkers.verify.verify import verify

    run = _copy(lab_run, tmp_path)
    cfg_path = run / "models" / "adapted" / "config.json"
    _edit(cfg_path, lambda d: d.update(auto_map={"AutoModelForCausalLM": "evil.Model"}))
    (run / "models" / "adapted" / "evil.py").write_text("open('/tmp/cptlab-evil-ran', 'w').write('x')\n")
    _edit(run / "step1_baseline.json", lambda d: d["config"]["code_source"].update(path="/"))
    _rehash(run)
    failed = {c.id: c for c in verify(run).failures}
    assert "custom code" in failed["v.adapted_model"].got
    assert "code_source" in failed["v.config"].got
    assert not os.path.exists("/tmp/cptlab-evil-ran")


def test_an_empty_manifest_fails(lab_run, tmp_path):
    from checkers.verify.verify import verify

    run = _copy(lab_run, tmp_path)
    _edit(run / "manifest.json", lambda d: d.update(files={}))
    failed = {c.id: c for c in verify(run).failures}
    assert "lists no files" in failed["v.manifest"].got


def test_retraining_catches_a_rewritten_log_and_another_recipe(lab_run, tmp_path):
    from checkers.verify.verify import verify
    from cptlab.core.config import get_config
    from cptlab.lab.pipeline import run_all

    # an honest learner's replay schedule that rounds where the reference floors: theirs to choose,
    # so the re-run repeats it and the run verifies
    from cptlab.lab.study import run_study

    own = _copy(lab_run, tmp_path / "own")
    run_study(
        own,
        progress=False,
        schedule_fn=lambda f, w, n: [round(f * w * k) - round(f * w * (k - 1)) for k in range(1, n + 1)],
    )
    _rehash(own)
    reference = {v["name"]: v for v in json.loads((lab_run / "step4_tradeoff.json").read_text())["study"]["variants"]}
    mine = [
        v for v in json.loads((own / "step4_tradeoff.json").read_text())["study"]["variants"] if v["choice"] == "replay"
    ]
    assert any(v["replay_windows_per_step"] != reference[v["name"]]["replay_windows_per_step"] for v in mine)
    report = verify(own, retrain=True)
    assert report.passed, str(report)
    run = _copy(lab_run, tmp_path)
    _edit(run / "step3_cpt.json", lambda d: [r.update(loss=r["loss"] * 0.97) for r in d["log"]])
    _edit(run / "step4_tradeoff.json", lambda d: d.pop("study"))  # the log alone: no study to re-run
    _rehash(run)
    assert {c.id for c in verify(run, retrain=True).failures} == {"v.retrain_log"}
    other = tmp_path / "hot"
    cfg = get_config("smoke", cpt_lr=3 * get_config("smoke").cpt_lr, max_steps=20)
    run_all(cfg, other, progress=False, study=False)
    honest = get_config("smoke").to_dict()
    _edit(other / "step1_baseline.json", lambda d: d.update(config={**honest, "seed": d["config"]["seed"]}))
    _rehash(other)
    failed = {c.id for c in verify(other, retrain=True).failures}
    assert "v.retrain" in failed and "v.retrain_log" in failed


def test_retraining_catches_a_consistently_edited_study(lab_run, tmp_path):
    import math

    from checkers import check_step4
    from checkers.verify.verify import verify
    from cptlab.core.uncertainty import drop_interval, ratio_interval

    run = _copy(lab_run, tmp_path)

    def lora_wins(d):
        study = d["study"]
        lora = next(v for v in study["variants"] if v["choice"] == "lora")
        lora["code_ppl"] = d["adapted_code_ppl"] * 0.9  # better than pure CPT, with its raw sums to match
        lora["general_ppl"] = d["baseline_general_ppl"]
        for k in ("code", "general"):
            new_sum = math.log(lora[f"{k}_ppl"]) * lora[f"{k}_tokens"]
            scale = new_sum / lora[f"{k}_nll_sum"]
            lora[f"{k}_units"]["nll"] = [x * scale for x in lora[f"{k}_units"]["nll"]]  # per-document sums to match
            lora[f"{k}_nll_sum"] = new_sum
        lora["code_ppl_drop"] = 1 - lora["code_ppl"] / d["baseline_code_ppl"]
        lora["forgetting_ratio"] = lora["general_ppl"] / d["baseline_general_ppl"]
        lora["code_ppl_drop_ci"] = drop_interval(d["baseline"]["code"]["units"], lora["code_units"])
        lora["forgetting_ratio_ci"] = ratio_interval(d["baseline"]["general"]["units"], lora["general_units"])
        study["recommendation"]["name"] = lora["name"]
        study["pareto_front"] = [lora["name"]]

    _edit(run / "step4_tradeoff.json", lora_wins)
    _rehash(run)
    assert check_step4(run).passed  # consistent with itself: only a re-run tells
    failed = {c.id: c for c in verify(run, retrain=True).failures}
    assert set(failed) == {"v.retrain_study"} and "LoRA" in failed["v.retrain_study"].got


def test_a_study_edit_that_leaves_the_per_document_sums_fails_their_interval(lab_run, tmp_path):
    import math

    from checkers import check_step4

    run = _copy(lab_run, tmp_path)

    def lora_better(d):
        lora = next(v for v in d["study"]["variants"] if v["choice"] == "lora")
        lora["code_ppl"] = d["adapted_code_ppl"] * 0.9
        lora["code_nll_sum"] = math.log(lora["code_ppl"]) * lora["code_tokens"]
        lora["code_ppl_drop"] = 1 - lora["code_ppl"] / d["baseline_code_ppl"]

    _edit(run / "step4_tradeoff.json", lora_better)
    _rehash(run)
    failed = [c.id for c in check_step4(run).failures]
    assert "s4.study_intervals" in failed


def test_the_lab_command_s_grader_exits_1_when_a_point_is_lost(lab_run, tmp_path):
    """`cptlab lab` ends with `python -m checkers summarize RUN` in its own process: exit 0 for the
    fixture's run (asserted there), exit 1 once a results file is edited, the page written both times."""
    import subprocess
    import sys

    run = _copy(lab_run, tmp_path)
    data = json.loads((run / "step1_baseline.json").read_text())
    data["baseline_code_ppl"] *= 0.5  # no longer exp(code.nll_sum / code.tokens)
    (run / "step1_baseline.json").write_text(json.dumps(data))
    (run / "index.html").unlink()
    done = subprocess.run([sys.executable, "-m", "checkers", "summarize", str(run)], capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "s1.code_ppl_from_raw" in done.stdout and (run / "index.html").is_file()
