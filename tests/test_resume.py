"""Resume: an interrupted CPT run continues from its checkpoint and ends bit-identical (CPU)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cptlab.core.config import get_config
from cptlab.model.train import Checkpointing, train


class Boom(RuntimeError):
    pass


def _cfg():
    return get_config(
        "smoke",
        block_size=16,
        batch_size=2,
        grad_accum=2,
        max_steps=12,
        warmup_steps=2,
        cpt_lr=1e-3,
        seed=3,
        device="cpu",
    )


def test_resume_after_an_exception_is_bit_identical(model_and_tok, tmp_path):
    model, _ = model_and_tok
    stream = np.random.default_rng(0).integers(0, 300, 4000).astype(np.uint16)
    cfg = _cfg()
    torch.manual_seed(0)
    ref = copy.deepcopy(model)
    ref_log = train(ref, stream, cfg, torch.device("cpu"), progress=False).log

    m = copy.deepcopy(model)
    ck = Checkpointing(tmp_path / "ck", every=5, key="k", extra={"seen": []})

    def explode(step, _m):
        ck.extra["seen"].append(step)
        if step == 8:
            raise Boom("interrupted")

    torch.manual_seed(0)
    with pytest.raises(Boom):
        train(m, stream, cfg, torch.device("cpu"), progress=False, on_step=explode, checkpointing=ck)
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["step"] == 5

    m2 = copy.deepcopy(model)  # a fresh process would start from the base weights
    ck2 = Checkpointing(tmp_path / "ck", every=5, key="k", extra={})
    torch.manual_seed(123)  # whatever the global RNG is now, the checkpoint restores it
    log = train(m2, stream, cfg, torch.device("cpu"), progress=False, checkpointing=ck2).log
    assert ck2.extra["seen"] == [1, 2, 3, 4, 5]
    assert log == ref_log
    for (n, a), b in zip(ref.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n


def test_checkpoint_of_another_config_is_refused(model_and_tok, tmp_path):
    model, _ = model_and_tok
    stream = np.random.default_rng(0).integers(0, 300, 4000).astype(np.uint16)
    cfg = _cfg().replace(max_steps=6)
    train(
        copy.deepcopy(model),
        stream,
        cfg,
        torch.device("cpu"),
        progress=False,
        checkpointing=Checkpointing(tmp_path, 5, key="a"),
    )
    with pytest.raises(RuntimeError, match="another configuration"):
        train(
            copy.deepcopy(model),
            stream,
            cfg,
            torch.device("cpu"),
            progress=False,
            checkpointing=Checkpointing(tmp_path, 5, key="b"),
        )


def _cli(out, *extra):
    # a list-valued --set: the resumed run must rebuild the very config it stored
    sets = [
        "--set",
        "max_steps=300",
        "--set",
        "checkpoint_every=20",
        "--set",
        "curve_every=100",
        "--set",
        "warmup_steps=3",
        "--set",
        "replay_fractions=[0.1,0.2]",
    ]
    return [
        sys.executable,
        "-m",
        "cptlab",
        "run",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        "--no-study",
        *sets,
        *extra,
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    full = tmp_path / "full"
    subprocess.run(_cli(full), check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = killed / "checkpoints" / "cpt" / "meta.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["step"] >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "step3_cpt.json").exists()
    subprocess.run(_cli(killed, "--resume"), check=True, capture_output=True, timeout=600)
    a = json.loads((full / "step4_tradeoff.json").read_text())
    b = json.loads((killed / "step4_tradeoff.json").read_text())
    assert b["adapted_code_ppl"] == a["adapted_code_ppl"] and b["adapted_general_ppl"] == a["adapted_general_ppl"]
    la = json.loads((full / "step3_cpt.json").read_text())["log"]
    lb = json.loads((killed / "step3_cpt.json").read_text())["log"]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert not (killed / "checkpoints" / "cpt").exists()
