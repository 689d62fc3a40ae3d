"""The trade-off study's parts against independent computations."""

import copy

import numpy as np
import pytest
import torch

from cptlab.core.config import get_config
from cptlab.data.corpus import replay_batches, replay_counts
from cptlab.lab.study import (
    base_weights_digest,
    interpolate,
    load_interpolated,
    lora_model,
    pareto_front,
    recommend,
    state_of,
)
from cptlab.model.measure import floor_crossing
from cptlab.model.perplexity import perplexity
from cptlab.model.train import train


@pytest.mark.parametrize(
    "frac,batch,steps", [(0.05, 4, 150), (0.1, 4, 150), (0.25, 4, 150), (0.1, 16, 150), (0.3, 3, 7)]
)
def test_replay_counts_hold_the_share(frac, batch, steps):
    counts = replay_counts(frac, batch, steps)
    assert len(counts) == steps and all(0 <= c <= batch for c in counts)
    assert abs(sum(counts) / (batch * steps) - frac) <= 1 / (batch * steps)
    # spread out, not bunched: every prefix stays within one window of the target
    run = np.cumsum(counts)
    assert all(abs(run[k] - frac * batch * (k + 1)) < 1 for k in range(steps))


def test_replay_batches_mix_the_two_streams():
    cfg = get_config("smoke", block_size=8, batch_size=4, max_steps=10)
    code = np.zeros(1000, dtype=np.uint16)
    english = np.ones(1000, dtype=np.uint16)
    record = []
    fn = replay_batches(code, english, cfg, 0.25, record)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 11):
        x = torch.cat(fn(step, g))
        assert x.shape == (4, 8) and int((x[:, 0] == 1).sum()) == record[-1]
    assert sum(record) == 10


def test_interpolation_endpoints_and_midpoint(model_and_tok):
    model, _ = model_and_tok
    base = state_of(model)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():  # the tied embedding and lm_head move together, as in a real CPT model
            p.add_(0.01 * torch.randn_like(p))
    tuned = state_of(m)
    for alpha, want in ((0.0, base), (1.0, tuned), (0.5, {n: (base[n] + tuned[n]) / 2 for n in base})):
        load_interpolated(m, interpolate(base, tuned, alpha))
        assert all(torch.allclose(p, want[n]) for n, p in m.state_dict().items())
    assert all(torch.equal(base[n], p) for n, p in state_of(model).items())  # the base itself untouched


def test_a_wrong_interpolated_state_is_refused_in_one_line(model_and_tok):
    model, _ = model_and_tok
    state = state_of(model)
    with pytest.raises(ValueError, match="not the model's .* state-dict keys"):
        load_interpolated(copy.deepcopy(model), {k: v for k, v in list(state.items())[1:]})


def test_lora_trains_adapters_and_leaves_base_bit_identical(model_and_tok):
    model, _ = model_and_tok
    m = copy.deepcopy(model)
    cfg = get_config(
        "smoke", block_size=16, batch_size=2, max_steps=3, warmup_steps=0, cpt_lr=1e-2, lora_r=4, lora_alpha=8
    )
    before = base_weights_digest(m)
    ids = np.random.default_rng(0).integers(0, 300, 2000).astype(np.uint16)
    p0 = perplexity(m, ids, 16).ppl
    pm = lora_model(m, cfg)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    train(pm, ids, cfg, torch.device("cpu"), progress=False)
    assert base_weights_digest(pm) == before
    merged = pm.merge_and_unload()
    assert base_weights_digest(merged) != before  # merging folds the adapters in: the digest notices
    assert perplexity(merged, ids, 16).ppl != pytest.approx(p0, rel=1e-6)


def _v(name, drop, ratio):
    return {"name": name, "choice": "x", "code_ppl_drop": drop, "forgetting_ratio": ratio}


def test_recommendation_and_pareto_front():
    vs = [_v("a", 0.8, 1.30), _v("b", 0.6, 1.08), _v("c", 0.5, 1.09), _v("d", 0.2, 1.01)]
    assert recommend(vs, 1.10)["name"] == "b"
    assert recommend(vs, 1.05)["name"] == "d"
    assert recommend(vs, 1.00)["name"] == "d" and "no variant" in recommend(vs, 1.00)["reason"]
    assert pareto_front(vs) == ["a", "b", "d"]


def test_floor_crossing():
    curve = [
        {"step": 0, "forgetting_ratio": 1.0, "code_ppl_drop": 0.0},
        {"step": 10, "forgetting_ratio": 1.05, "code_ppl_drop": 0.3},
        {"step": 20, "forgetting_ratio": 1.12, "code_ppl_drop": 0.5},
        {"step": 30, "forgetting_ratio": 1.2, "code_ppl_drop": 0.6},
    ]
    f = floor_crossing(curve, 1.10)
    assert f["first_step_above"] == 20 and f["code_ppl_drop_at_crossing"] == 0.5
    assert f["best_step_under_floor"] == 10 and f["best_code_ppl_drop_under_floor"] == 0.3
    assert floor_crossing(curve, 2.0)["first_step_above"] is None


def _u(nll, tok):
    return {"nll": [float(x) for x in nll], "tokens": [int(t) for t in tok]}


def test_noise_names_variants_the_evaluation_set_cannot_tell_apart():
    import numpy as np

    from cptlab.core.uncertainty import drop_interval, ratio_interval
    from cptlab.lab.study import noise, within_floor

    rng = np.random.default_rng(0)
    tok = rng.integers(500, 3000, 30)
    hard = rng.normal(5.0, 0.8, 30)
    base = _u(tok * hard, tok)

    def variant(name, shift, eng):
        code = _u(tok * (hard - shift + rng.normal(0, 0.05, 30)), tok)
        gen = _u(tok * (hard + eng + rng.normal(0, 0.02, 30)), tok)
        v = {
            "name": name,
            "choice": "x",
            "code_units": code,
            "general_units": gen,
            "code_ppl_drop_ci": drop_interval(base, code),
            "forgetting_ratio_ci": ratio_interval(base, gen),
        }
        v["code_ppl_drop"], v["forgetting_ratio"] = (
            v["code_ppl_drop_ci"]["estimate"],
            v["forgetting_ratio_ci"]["estimate"],
        )
        v["within_floor"] = within_floor(v, 1.05)
        return v

    a, twin, weak, over = (
        variant("a", 0.30, 0.01),
        variant("twin", 0.30, 0.01),
        variant("weak", 0.05, 0.0),
        variant("over", 0.5, 0.2),
    )
    out = noise([a, twin, weak, over], 1.05, base)
    chosen = out["within_noise"] + [r["versus"] for r in out["leads"]]
    assert "over" not in chosen  # over the floor: not a candidate
    assert set(out["within_noise"]) == ({"twin"} if recommend([a, twin, weak, over], 1.05)["name"] == "a" else {"a"})
    assert "within noise" in out["noise_note"]
    assert over["within_floor"] == "over" and weak["within_floor"] == "under"
    assert (
        within_floor({"forgetting_ratio": 1.04, "forgetting_ratio_ci": {"low": 1.03, "high": 1.06}}, 1.05)
        == "straddles"
    )
