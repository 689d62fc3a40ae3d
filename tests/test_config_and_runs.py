"""One config path, thresholds that refuse an unknown preset, a real retention-floor stop, and the
run folders `make lab` creates."""

import json
import os

import pytest

from checkers import check_step3
from checkers.core.thresholds import UnknownPreset, thresholds_for
from checkers.results.steps import check_step1
from cptlab.core.config import DataSource, LabConfig, get_config
from cptlab.lab.pipeline import run_all
from cptlab.notebook.execute import new_run_dir


def test_overrides_are_normalised_like_a_stored_config():
    cfg = get_config(
        "smoke",
        replay_fractions=[0.1, 0.2],
        betas=[0.9, 0.99],
        code_source={"kind": "py_dir", "path": "/tmp", "exclude_tests": False},
    )
    assert cfg.replay_fractions == (0.1, 0.2) and cfg.betas == (0.9, 0.99)
    assert cfg.code_source == DataSource(kind="py_dir", path="/tmp", exclude_tests=False)
    assert LabConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_thresholds_take_the_recipe_from_the_preset_and_refuse_an_unknown_one(tmp_path):
    for preset in ("tiny", "gpt2", "smoke"):
        cfg, T = get_config(preset), thresholds_for(preset)
        assert (T["cpt_lr"], T["max_steps"], T["warmup_steps"], T["block_size"]) == (
            cfg.cpt_lr,
            cfg.max_steps,
            cfg.warmup_steps,
            cfg.block_size,
        )
    with pytest.raises(UnknownPreset):
        thresholds_for("huge")
    (tmp_path / "step1_baseline.json").write_text(json.dumps({"preset": "huge", "baseline_code_ppl": 2.0}))
    report = check_step1(tmp_path)
    assert [c.id for c in report.failures] == ["s1.preset"] and "unknown preset 'huge'" in report.failures[0].got


@pytest.mark.slow
def test_a_real_retention_floor_stop_is_graded_as_such(tmp_path):
    cfg = get_config("smoke", stop_at_floor=True, retention_floor=1.0001, curve_every=5)
    run_all(cfg, tmp_path / "run", progress=False, study=False)
    s3 = json.loads((tmp_path / "run" / "step3_cpt.json").read_text())
    stopped = s3["floor"]["stopped_at_step"]
    assert stopped is not None and stopped < cfg.max_steps and stopped % 5 == 0
    assert len(s3["log"]) == stopped and s3["curve"][-1]["forgetting_ratio"] > 1.0001
    assert all(p["forgetting_ratio"] <= 1.0001 for p in s3["curve"][1:-1])
    failed = {c.id for c in check_step3(tmp_path / "run").failures}
    assert not failed & {"s3.steps", "s3.cosine_decay", "s3.forgetting_curve", "s3.lr_schedule"}, failed


def test_new_run_folders_are_distinct_and_latest_points_at_the_newest(tmp_path):
    a = new_run_dir(tmp_path, "smoke")
    b = new_run_dir(tmp_path, "smoke")  # within the same second
    assert a != b and a.is_dir() and b.is_dir()
    assert os.readlink(tmp_path / "latest") == b.name and (tmp_path / "latest").resolve() == b.resolve()


@pytest.mark.slow
def test_a_smoke_run_graded_for_tiny_fails_naming_both(tmp_path):
    cfg = get_config("smoke")
    run_all(cfg, tmp_path / "run", progress=False, study=False)
    from checkers.results.steps import check_all

    assert all(r.passed for r in check_all(tmp_path / "run")[:3])
    for report in check_all(tmp_path / "run", "tiny"):
        failed = {c.id: c for c in report.failures}
        assert (
            f"s{report.step}.preset" in failed
            and "made with 'smoke', graded for 'tiny'" in failed[f"s{report.step}.preset"].got
        )
    s3 = check_all(tmp_path / "run", "tiny")[2]
    assert "s3.steps" in {c.id for c in s3.failures}  # tiny's 150 steps apply
    # the tiny base model is never built to compare a smoke run's weights: that run does not count for tiny
    assert "graded for 'tiny'" in {c.id: c for c in s3.checks}["s3.weights_moved"].got and s3.points == 0


def test_a_retired_setting_is_refused_with_why_and_read_past_in_old_results():
    from cptlab.core.config import ConfigError, LabConfig, get_config

    with pytest.raises(
        ConfigError, match="curve_max_tokens is no longer a setting: the forgetting curve is scored on the headline"
    ):
        get_config("tiny", curve_max_tokens=100)
    old = {**get_config("tiny").to_dict(), "curve_max_tokens": 8192}
    assert LabConfig.from_dict(old).eval_max_tokens is None  # tiny scores its whole sets (>= 50k tokens each)
