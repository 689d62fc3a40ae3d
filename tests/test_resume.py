"""Resume: an interrupted CPT run continues from its checkpoint and ends bit-identical (CPU)."""

import copy
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from cptlab.core.config import get_config
from cptlab.model.train import Checkpointing, Hooks, train


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
        train(m, stream, cfg, torch.device("cpu"), progress=False, hooks=Hooks(on_step=explode, checkpointing=ck))
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["step"] == 5

    m2 = copy.deepcopy(model)  # a fresh process would start from the base weights
    ck2 = Checkpointing(tmp_path / "ck", every=5, key="k", extra={})
    torch.manual_seed(123)  # whatever the global RNG is now, the checkpoint restores it
    log = train(m2, stream, cfg, torch.device("cpu"), progress=False, hooks=Hooks(checkpointing=ck2)).log
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
        hooks=Hooks(checkpointing=Checkpointing(tmp_path, 5, key="a")),
    )
    with pytest.raises(RuntimeError, match="another configuration"):
        train(
            copy.deepcopy(model),
            stream,
            cfg,
            torch.device("cpu"),
            progress=False,
            hooks=Hooks(checkpointing=Checkpointing(tmp_path, 5, key="b")),
        )


# A run that dies as `kill -9` would, at a known step: right after step 41 begins its hook, with the
# checkpoint of step 40 on disk (saved as the loop asked for step 41's batch). No polling, no race
# with a run that finishes first.
DIES_AT_41 = """
import dataclasses, os, signal, sys
import cptlab.lab.steps as steps
real = steps.train
def train(*args, hooks=None, **kw):
    on_step = hooks.on_step if hooks else None
    def hooked(step, model):
        if step == 41:
            os.kill(os.getpid(), signal.SIGKILL)
        if on_step is not None:
            on_step(step, model)
    return real(*args, hooks=dataclasses.replace(hooks or steps.Hooks(), on_step=hooked), **kw)
steps.train = train
from cptlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(out, *extra):
    # a list-valued --set: the resumed run must rebuild the very config it stored
    sets = ["max_steps=60", "checkpoint_every=20", "curve_every=15", "warmup_steps=3", "replay_fractions=[0.1,0.2]"]
    return (
        ["run", "--preset", "smoke", "--out", str(out), "--quiet", "--no-study"]
        + [a for kv in sets for a in ("--set", kv)]
        + list(extra)
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "cptlab", *_args(full)], check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    died = subprocess.run([sys.executable, "-c", DIES_AT_41, *_args(killed)], capture_output=True, timeout=600)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    meta = json.loads((killed / "checkpoints" / "cpt" / "meta.json").read_text())
    assert meta["step"] == 40 and [p["step"] for p in meta["extra"]["curve"]] == [0, 15, 30]
    assert not (killed / "step3_cpt.json").exists()
    subprocess.run(
        [sys.executable, "-m", "cptlab", *_args(killed, "--resume")], check=True, capture_output=True, timeout=600
    )
    a = json.loads((full / "step4_tradeoff.json").read_text())
    b = json.loads((killed / "step4_tradeoff.json").read_text())
    assert b["adapted_code_ppl"] == a["adapted_code_ppl"] and b["adapted_general_ppl"] == a["adapted_general_ppl"]
    sa = json.loads((full / "step3_cpt.json").read_text())
    sb = json.loads((killed / "step3_cpt.json").read_text())
    assert [r["loss"] for r in sa["log"]] == [r["loss"] for r in sb["log"]] and len(sa["log"]) == 60
    assert [p["step"] for p in sb["curve"]] == [0, 15, 30, 45, 60]
    assert [p["code_ppl"] for p in sb["curve"]] == [p["code_ppl"] for p in sa["curve"]]
    assert not (killed / "checkpoints" / "cpt").exists()
