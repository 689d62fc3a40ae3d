"""Two gloo processes under torchrun follow the single-process run at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cptlab.core.config import get_config
from cptlab.data.sources import load_model
from cptlab.model.perplexity import perplexity
from cptlab.model.train import train


# the plain chunked loss with a log row synced every step; the fused loss with syncs every 3 steps
@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"fused_ce": True, "log_every": 3}])
def test_two_gloo_processes_match_one(tiny_model_dir, tmp_path, overrides):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")),
        str(tiny_model_dir),
        str(out),
        json.dumps(overrides),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads(out.read_text())

    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir))
    stream = np.random.default_rng(0).integers(0, 300, 6000).astype(np.uint16)
    cfg = get_config(
        "smoke",
        block_size=16,
        batch_size=4,
        grad_accum=2,
        max_steps=8,
        warmup_steps=2,
        cpt_lr=1e-3,
        seed=5,
        device="cpu",
        **overrides,
    )
    log = train(model, stream, cfg, torch.device("cpu"), progress=False).log
    assert len(log) == len(ddp["log"]) == 8  # a short or empty DDP log must not pass through zip
    for a, b in zip(log, ddp["log"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["tokens"] == a["tokens"] and b["lr"] == a["lr"]
    for n, p in model.named_parameters():
        assert np.allclose(p.detach().flatten()[:50].numpy(), ddp["params"][n], atol=1e-5), n
    res = perplexity(model, stream[:3000], 16, batch_size=3)
    assert ddp["tokens"] == res.tokens
    assert ddp["nll_sum"] == pytest.approx(res.nll_sum, rel=1e-5)


def test_notebook3s_two_processes_give_the_one_process_loss(lab_run, tmp_path):
    """The lab's loop under torchrun on the learner's blocks: each step's loss equals the one-process
    loss to float rounding, with half the windows in each process."""
    import shutil

    from cptlab.lab.ddp import ddp_table, two_processes

    run = tmp_path / "run"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb", "checkpoints", "models"))
    result = two_processes(run, steps=3)
    one, two = result["one"], result["two"]
    assert one["processes"] == 1 and two["processes"] == 2 and two["backend"] == "gloo"
    assert two["batch_per_process"] * 2 == one["batch_per_process"]
    assert [r["step"] for r in result["rows"]] == [1, 2, 3]
    for a, b in zip(one["log"], two["log"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["tokens"] == a["tokens"]
    assert one["log"][0]["loss"] != one["log"][-1]["loss"]  # it trained
    assert json.loads((run / "ddp.json").read_text())["max_difference"] < 1e-4
    assert "largest difference" in ddp_table(result)


def test_two_processes_match_one_with_gpt2s_dropout(lab_run, tmp_path):
    """GPT-2's config has dropout 0.1 and each rank draws its own masks: the comparison turns dropout off
    in both runs, so on such a base the two processes still give the one-process loss to float rounding."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.core.results import STEP_FILES
    from cptlab.lab.ddp import two_processes

    run = tmp_path / "run"
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns("*.ipynb", "checkpoints", "models"))
    step1 = json.loads((run / STEP_FILES[1]).read_text())
    base = tmp_path / "base_dropout"
    model = AutoModelForCausalLM.from_pretrained(step1["base_model"])
    model.config.update({"attn_pdrop": 0.1, "resid_pdrop": 0.1, "embd_pdrop": 0.1})
    model.save_pretrained(base, safe_serialization=True)
    AutoTokenizer.from_pretrained(step1["base_model"]).save_pretrained(base)
    step1["base_model"] = str(base)
    (run / STEP_FILES[1]).write_text(json.dumps(step1))
    assert AutoModelForCausalLM.from_pretrained(base).config.resid_pdrop == 0.1

    result = two_processes(run, steps=3)
    assert result["one"]["dropout"] == result["two"]["dropout"] == "off"
    for a, b in zip(result["one"]["log"], result["two"]["log"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
