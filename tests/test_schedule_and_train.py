"""The CPT loop: schedule step by step against transformers' own scheduler, accumulation equal to
one large batch, seeded reproducibility and the NaN guard."""

import copy
import warnings

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from cptlab.core.config import get_config
from cptlab.model.schedule import lr_multiplier
from cptlab.model.train import Hooks, TrainingDivergedError, train


@pytest.mark.parametrize("warmup,total", [(10, 150), (3, 30), (0, 20)])
def test_schedule_matches_transformers(warmup, total):
    warnings.simplefilter("ignore", UserWarning)  # stepping the scheduler without an optimizer step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(1, total + 1):
        sched.step()
        assert lr_multiplier(step, warmup, total) == pytest.approx(sched.get_last_lr()[0], abs=1e-12)


def _cfg(**kw):
    base = dict(
        block_size=16, batch_size=4, grad_accum=1, max_steps=12, warmup_steps=3, cpt_lr=1e-3, seed=7, device="cpu"
    )
    base.update(kw)
    return get_config("smoke", **base)


def _stream(n=5000, vocab=400, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def test_logged_lr_follows_transformers_and_peaks_at_warmup(model_and_tok):
    model, _ = model_and_tok
    cfg = _cfg()
    res = train(copy.deepcopy(model), _stream(), cfg, torch.device("cpu"), progress=False)
    warnings.simplefilter("ignore", UserWarning)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.cpt_lr)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.max_steps)
    for row in res.log:
        sched.step()
        assert row["lr"] == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-15)
    lrs = [r["lr"] for r in res.log]
    assert int(np.argmax(lrs)) + 1 == cfg.warmup_steps
    assert [r["step"] for r in res.log] == list(range(1, cfg.max_steps + 1))
    assert res.log[-1]["tokens"] == cfg.max_steps * cfg.batch_size * (cfg.block_size - 1)


def test_accumulation_equals_one_large_batch(model_and_tok):
    model, _ = model_and_tok
    stream = _stream()
    windows = [torch.from_numpy(stream[i * 16 : i * 16 + 16].astype(np.int64)) for i in range(8)]
    full = [torch.stack(windows[:4])], [torch.stack(windows[4:])]
    halves = (
        [torch.stack(windows[0:2]), torch.stack(windows[2:4])],
        [torch.stack(windows[4:6]), torch.stack(windows[6:8])],
    )

    def run(batches, bs, accum):
        m = copy.deepcopy(model)
        cfg = _cfg(batch_size=bs, grad_accum=accum, max_steps=2, warmup_steps=0, grad_clip=1e9)
        hooks = Hooks(batch_fn=lambda step, g: batches[step - 1])
        log = train(m, stream, cfg, torch.device("cpu"), progress=False, hooks=hooks).log
        return m, log

    m1, log1 = run(full, 4, 1)
    m2, log2 = run(halves, 2, 2)
    for a, b in zip(log1, log2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6), n


def test_same_seed_same_run(model_and_tok):
    model, _ = model_and_tok
    logs = [
        train(copy.deepcopy(model), _stream(), _cfg(max_steps=5), torch.device("cpu"), progress=False).log
        for _ in range(2)
    ]
    assert logs[0] == logs[1]
    other = train(copy.deepcopy(model), _stream(), _cfg(max_steps=5, seed=8), torch.device("cpu"), progress=False).log
    assert other != logs[0]


def test_loss_decreases_on_repeated_data(model_and_tok):
    model, _ = model_and_tok
    stream = np.tile(_stream(40), 50)
    log = train(copy.deepcopy(model), stream, _cfg(max_steps=30, cpt_lr=1e-2), torch.device("cpu"), progress=False).log
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]


# a sync every step, and one every 4 steps: the error still names the first bad step
@pytest.mark.parametrize("cadence", [{}, {"max_steps": 6, "log_every": 4}])
def test_nan_loss_stops_with_clear_error(model_and_tok, cadence):
    model, _ = model_and_tok
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.transformer.wte.weight[:] = float("nan")
    with pytest.raises(TrainingDivergedError, match="at step 1 .*Lower the learning rate"):
        train(m, _stream(), _cfg(**cadence), torch.device("cpu"), progress=False)


def test_deferred_log_syncs_give_the_same_rows(model_and_tok):
    """log_every only changes when the host reads the numbers, never the numbers or the rows."""
    model, _ = model_and_tok
    every_step = train(copy.deepcopy(model), _stream(), _cfg(max_steps=7), torch.device("cpu"), progress=False).log
    batched = train(
        copy.deepcopy(model), _stream(), _cfg(max_steps=7, log_every=3), torch.device("cpu"), progress=False
    ).log
    assert [r["step"] for r in batched] == list(range(1, 8)) and batched == every_step


@pytest.mark.parametrize("min_ratio", [0.0, 0.1, 0.5])
def test_the_checkers_schedule_follows_training_and_transformers_at_a_floor(min_ratio):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from checkers.results.steps import schedule
    from cptlab.model.schedule import lr_multiplier

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, 10, 150, min_lr_rate=min_ratio)
    for step in range(1, 151):
        want = sched.lr_lambdas[0](step)
        assert schedule(step, 10, 150, min_ratio) == pytest.approx(want, abs=1e-12)
        assert lr_multiplier(step, 10, 150, min_ratio) == pytest.approx(want, abs=1e-12)
