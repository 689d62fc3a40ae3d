"""The judge: a learner's function runs in its own process under limits; only plain data comes back,
and nothing it does at call time reaches the process that decides its points."""

import sys

import pytest

from checkers.grading.judge import Limits, judge_question, judge_questions

pytestmark = pytest.mark.slow
SETUP = "import math\nimport numpy as np\nimport torch\n"


def judge(qid, source, tmp_path, seconds=30.0, memory_gib=3):
    return judge_question(
        qid,
        [SETUP, source],
        lambda cmd: cmd,
        {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        tmp_path,
        Limits(seconds, int(memory_gib * (1 << 30))),
        seed=5,
    )


RIGHT_41 = "def code_ppl_drop(b, a):\n    return 1 - a / b\n\n\ndef forgetting_ratio(b, a):\n    return a / b\n"


def test_a_right_function_gets_its_points_from_another_process(tmp_path):
    report = judge("4.1", RIGHT_41, tmp_path)
    assert report.passed and report.points == 2 and report.seed == 5


def test_an_object_that_equals_everything_comes_back_as_its_repr(tmp_path):
    liar = """class Anything(float):
    def __eq__(self, other):
        return True
    __hash__ = float.__hash__


class Always:
    def __eq__(self, other):
        return True


def code_ppl_drop(b, a):
    return Always()


def forgetting_ratio(b, a):
    return Always()
"""
    report = judge("4.1", liar, tmp_path)
    assert report.points == 0 and all("Always" in c.got for c in report.checks)


def test_patching_the_checker_or_builtins_at_call_time_changes_nothing_here(tmp_path):
    patcher = """def code_ppl_drop(b, a):
    import builtins, math
    builtins.abs = lambda x: 0  # the check's closeness test would pass anything, were it in this process
    math.isfinite = lambda x: True
    try:
        import checkers.code.exercises as ce
        ce._close = lambda *a, **k: True
    except Exception:
        pass
    return 0.0


def forgetting_ratio(b, a):
    return a / b
"""
    before = (abs, sys.modules["math"].isfinite)
    report = judge("4.1", patcher, tmp_path)
    assert report.points == 1 and (abs, sys.modules["math"].isfinite) == before
    assert [c.id for c in report.failures] == ["q4.1.code_ppl_drop"]


def test_a_hang_costs_the_question_and_names_the_function(tmp_path):
    report = judge(
        "3.1",
        "def lr_at(step, peak_lr, warmup_steps, max_steps):\n    while True:\n        pass\n",
        tmp_path,
        seconds=6,
    )
    assert report.points == 0
    assert any(
        c.id == "q3.1.limits" and c.got.startswith("lr_at: still running after the question's time limit of 6 s")
        for c in report.checks
    ), str(report)


def test_a_step_s_questions_share_a_process_and_a_hang_leaves_the_next_one_a_fresh_one(tmp_path):
    """pack_documents never returns: question 2.1 is lost at its own limit; 2.3, judged after it in the
    same step, gets a new process (the answer cells defined again) and its full points."""
    hang = "def pack_documents(doc_ids, eos_id):\n    while True:\n        pass\n"
    blocks = (
        "def to_blocks(stream, block_size):\n"
        "    n = (len(stream) // block_size) * block_size\n"
        "    return np.asarray(stream[:n]).reshape(-1, block_size)\n"
    )
    reports = judge_questions(
        ["2.1", "2.3"],
        [SETUP, hang, blocks],
        lambda cmd: cmd,
        {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        tmp_path,
        Limits(10.0, 3 << 30),
        seed=5,
    )
    assert reports["2.1"].points == 0 and "time limit of 10 s" in str(reports["2.1"]), str(reports["2.1"])
    assert reports["2.3"].passed and reports["2.3"].points == reports["2.3"].max_points, str(reports["2.3"])


def test_memory_past_the_cap_costs_the_question(tmp_path):
    hog = "def to_blocks(stream, block_size):\n    big = bytearray(6 << 30)\n    return big\n"
    report = judge("2.3", hog, tmp_path, memory_gib=3)
    assert report.points == 0 and "MemoryError" in " ".join(c.got for c in report.failures), str(report)


def test_a_missing_function_is_named(tmp_path):
    report = judge("2.1", "def pack(doc_ids, eos_id):\n    return None\n", tmp_path)
    assert report.points == 0 and "no function named pack_documents" in report.failures[0].got


def test_a_question_s_process_imports_what_functions_use_not_the_grader_or_the_lab_helpers():
    from checkers.grading.judge import setup_imports

    setup = (
        "import math\nimport torch.nn.functional as F\nfrom checkers import check_step1\nimport checkers.core\n"
        "from cptlab import get_config\nfrom cptlab.notebook import cells\nfrom cptlab.notebook.friendly import x\n"
        "import numpy as np, checkers\nfrom cptlab.notebooks_extra import y\n"
    )
    assert setup_imports(setup).splitlines() == [
        "import math",
        "import torch.nn.functional as F",
        "from cptlab import get_config",
        "from cptlab.notebooks_extra import y",
    ]


LORA_SETUP = "from peft import LoraConfig\n"


def test_a_lora_config_crosses_as_plain_fields_and_is_graded_here(tmp_path):
    right = (
        "def lora_config(r, alpha):\n"
        "    return LoraConfig(r=r, lora_alpha=alpha, target_modules=['c_attn', 'c_proj', 'c_fc'],\n"
        "                      fan_in_fan_out=True, lora_dropout=0.0, bias='none')\n"
    )
    report = judge("4.4", LORA_SETUP + right, tmp_path)
    assert report.passed and report.points == 4, str(report)
    missing = right.replace("fan_in_fan_out=True", "fan_in_fan_out=False")
    report = judge("4.4", LORA_SETUP + missing, tmp_path)
    assert [c.id for c in report.failures] == ["q4.4.fan_in_fan_out"], str(report)


def test_a_config_that_only_looks_like_lora_stays_opaque(tmp_path):
    fake = """class LoraConfig:
    r, lora_alpha, fan_in_fan_out = 8, 16, True
    target_modules = ["c_attn", "c_proj", "c_fc"]


def lora_config(r, alpha):
    return LoraConfig()
"""
    report = judge("4.4", fake, tmp_path)
    assert report.points == 0 and report.failures[0].id == "q4.4.returns", str(report)


LOOP_RIGHT = """def cpt_loop(run, lr_at, optimizer_step):
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
            run.model.train()
            run.curve.append(point)
            if cfg.stop_at_floor and point["forgetting_ratio"] > cfg.retention_floor:
                break
"""


def test_the_loop_runs_on_a_probe_run_in_the_learners_process(tmp_path):
    """The probe run crosses as its seed and settings, the reference step and schedule as names; its
    record comes back as plain data, and the judge decides on it."""
    assert judge("3.3", LOOP_RIGHT, tmp_path).points == 6
    never_assigned = LOOP_RIGHT.replace('group["lr"] = lr', "pass")
    report = judge("3.3", never_assigned, tmp_path)
    assert report.points == 5 and "mistake: the rate computed but never assigned" in report.failures[0].hint


def test_a_forged_record_is_read_as_nothing(tmp_path):
    forger = "def cpt_loop(run, lr_at, optimizer_step):\n    run.events = 'all right'\n    run.curve = None\n"
    report = judge("3.3", forger, tmp_path)
    assert report.points == 0 and not report.passed, str(report)


def test_a_learners_saved_result_is_reused_only_for_the_same_submission_and_settings(tmp_path):
    from checkers.grading.result import LearnerResult, load_result, save_result, submission_digest

    sub = tmp_path / "ada"
    sub.mkdir()
    (sub / "01_baseline.ipynb").write_text("{}")
    key = {"preset": "smoke", "submission": submission_digest(sub)}
    r = LearnerResult("ada", 7, "smoke", {"01": "ran to the end"}, {"1.1": 9.0})
    save_result(tmp_path / "ada.json", r, key)
    assert load_result(tmp_path / "ada.json", key) == r
    assert load_result(tmp_path / "ada.json", {**key, "preset": "tiny"}) is None
    (sub / "01_baseline.ipynb").write_text('{"changed": 1}')
    assert load_result(tmp_path / "ada.json", {**key, "submission": submission_digest(sub)}) is None
    (tmp_path / "torn.json").write_text('{"key": ')
    assert load_result(tmp_path / "torn.json", key) is None


def test_a_right_loop_keeps_its_points_on_a_busy_machine_whatever_its_process_draws(tmp_path):
    """The probe's steps run on one thread with dropout masks of their own: the learner's process
    (other threads, CPU-bound neighbours on every core, a random draw of its own before the loop)
    computes the very losses the grader's reference does."""
    import os
    import subprocess

    import torch

    drawing = LOOP_RIGHT.replace("    cfg = run.cfg\n", "    cfg = run.cfg\n    torch.rand(7)\n")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for seed in (1,):  # the seed whose losses moved before the probe ran on one thread
            report = judge_question(
                "3.3",
                [SETUP, drawing],
                lambda cmd: cmd,
                {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                tmp_path,
                Limits(120.0, 3 << 30),
                seed=seed,
            )
            assert report.points == 6, str(report)
    finally:
        torch.set_num_threads(threads)
        for p in busy:
            p.kill()
            p.wait()


def test_a_regular_expression_lora_config_crosses_and_earns_its_points(tmp_path):
    regex = (
        "def lora_config(r, alpha):\n"
        "    return LoraConfig(r=r, lora_alpha=alpha, target_modules=r'.*\\.(c_attn|c_proj|c_fc)',\n"
        "                      fan_in_fan_out=True, lora_dropout=0.0, bias='none')\n"
    )
    report = judge("4.4", LORA_SETUP + regex, tmp_path)
    assert report.passed and report.points == 4, str(report)
