"""A run that did not train: step 3's checks fail it (weights unchanged, a loss that only wanders),
and notebook 4 still runs to its end on its numbers (a zero drop, zero-width intervals)."""

import json
import random
import shutil

import pytest

from checkers import check_step3
from checkers.results.steps import loss_trend
from cptlab.notebook.execute import SOLUTION_DIR, execute_notebook


def test_the_loss_trend_tells_a_trend_from_batch_noise():
    rng = random.Random(0)
    noise = [7.0 + rng.gauss(0, 0.05) for _ in range(150)]
    fall, scatter, t = loss_trend(noise)
    assert not (t <= -3 and fall > scatter)
    falling = [7.0 - 1.5 * (1 - 0.98**i) + rng.gauss(0, 0.05) for i in range(150)]
    fall, scatter, t = loss_trend(falling)
    assert t <= -3 and fall > scatter and fall == pytest.approx(1.5 * 0.95, rel=0.35)
    # three steps against three can "fall" by chance; the fitted trend over every step does not
    lucky = [7.0 + 0.05, 7.0 + 0.04, 7.0 + 0.05] + [7.0 + rng.gauss(0, 0.02) for _ in range(144)] + [6.95, 6.96, 6.95]
    assert sum(lucky[-3:]) < sum(lucky[:3])
    fall, scatter, t = loss_trend(lucky)
    assert not (t <= -3 and fall > scatter)


@pytest.fixture(scope="module")
def untrained(lab_run, tmp_path_factory):
    """The smoke lab's run folder with the adapted model replaced by the base model and a flat log."""
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("untrained") / "run"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb", "plots", "step4_tradeoff.json"))
    s1 = json.loads((run / "step1_baseline.json").read_text())
    shutil.rmtree(run / "models" / "adapted")
    AutoModelForCausalLM.from_pretrained(s1["base_model"]).save_pretrained(
        run / "models" / "adapted", safe_serialization=True
    )
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(s1["base_model"]).save_pretrained(run / "models" / "adapted")
    s3 = json.loads((run / "step3_cpt.json").read_text())
    rng = random.Random(1)
    level = s3["log"][0]["loss"]
    for row in s3["log"]:
        row["loss"] = level + rng.gauss(0, 0.03)
    (run / "step3_cpt.json").write_text(json.dumps(s3))
    return run


def test_step3_fails_a_run_whose_weights_did_not_move(untrained, lab_run):
    failed = {c.id for c in check_step3(untrained).failures}
    assert {"s3.weights_moved", "s3.loss_trend"} <= failed, failed
    assert not {"s3.weights_moved", "s3.loss_trend"} & {c.id for c in check_step3(lab_run).failures}


def test_notebook4_runs_to_its_end_on_a_run_that_did_not_train(untrained, tmp_path):
    params = {"PRESET": "smoke", "RUN_DIR": str(untrained), "SEED": 1234, "OVERRIDES": {}}
    execute_notebook(SOLUTION_DIR / "04_tradeoff.ipynb", tmp_path / "04.ipynb", params)  # raises on any error
    s4 = json.loads((untrained / "step4_tradeoff.json").read_text())
    assert abs(s4["code_ppl_drop"]) < 1e-3 and abs(s4["forgetting_ratio"] - 1) < 1e-3
    assert (untrained / "plots" / "step4_before_after.png").is_file()


@pytest.mark.parametrize("steps", [1, 2, 8, 11])
def test_the_loss_reading_of_a_run_shorter_than_its_window(steps):
    """Notebook 3's reading of the loss names the steepest stretch of up to 10 steps: a run of fewer
    steps (a scaled-down preset) gets its whole length, not an IndexError."""
    from cptlab.notebook.cells import loss_reading

    s3 = {"log": [{"loss": 5.0 - 0.1 * i} for i in range(steps)], "hparams": {"warmup_steps": 2, "batch_size": 4}}
    text = loss_reading(s3)
    assert f"over steps 1-{min(steps, 11) if steps > 1 else 1}" in text and f"at step {steps};" in text
