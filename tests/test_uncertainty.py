"""The intervals: the bootstrap against scipy's, per-document sums against a hand loop, and the
pairing that makes a comparison of two models on the same documents tighter than either number."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cptlab.core import uncertainty as U
from cptlab.model.perplexity import perplexity


def units(nll, tokens):
    return {"nll": list(map(float, nll)), "tokens": list(map(int, tokens))}


def test_document_of_gives_each_position_its_document_and_piece():
    ids = np.array([5, 5, 0, 5, 5, 5, 5, 5, 0, 5, 0])
    # doc 0: positions 0-2 (its EOS included); doc 1: 3-8, cut in pieces of 3; doc 2: 9-10
    assert U.document_of(ids, 0, piece=3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert U.document_of(ids, 0, piece=100).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]


def test_ppl_interval_agrees_with_scipy_percentile_bootstrap():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    tok = rng.integers(200, 4000, 25)
    nll = tok * rng.normal(5.0, 0.6, 25)
    ours = U.ppl_interval(units(nll, tok))
    ref = scipy_stats.bootstrap(
        (nll, tok),
        lambda a, b, axis=-1: np.exp(a.sum(axis) / b.sum(axis)),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(1),
    ).confidence_interval
    width = ref.high - ref.low
    assert ours["estimate"] == pytest.approx(math.exp(nll.sum() / tok.sum()))
    assert ours["low"] == pytest.approx(ref.low, abs=0.05 * width)
    assert ours["high"] == pytest.approx(ref.high, abs=0.05 * width)
    assert U.contains(ours)


def test_paired_intervals_are_tighter_than_unpaired_and_hold_their_estimates():
    rng = np.random.default_rng(2)
    tok = rng.integers(500, 3000, 30)
    hardness = rng.normal(5.0, 0.8, 30)  # documents differ a lot; the model change is the same on each
    base = units(tok * hardness, tok)
    new = units(tok * (hardness - 0.3 + rng.normal(0, 0.02, 30)), tok)
    drop = U.drop_interval(base, new)
    ratio = U.ratio_interval(base, new)
    want = 1 - math.exp((sum(new["nll"]) - sum(base["nll"])) / tok.sum())
    assert drop["estimate"] == pytest.approx(want)
    assert ratio["estimate"] == pytest.approx(1 - want)
    assert U.contains(drop) and U.contains(ratio) and drop["paired"]
    b, n = U.ppl_interval(base), U.ppl_interval(new)
    unpaired_width = (n["high"] / b["low"]) - (n["low"] / b["high"])
    assert ratio["high"] - ratio["low"] < 0.2 * unpaired_width


def test_difference_interval_tells_a_real_gap_from_none():
    rng = np.random.default_rng(3)
    tok = rng.integers(500, 3000, 30)
    hard = rng.normal(5.0, 0.8, 30)
    base = units(tok * hard, tok)
    a = units(tok * (hard - 0.30 + rng.normal(0, 0.05, 30)), tok)
    b = units(tok * (hard - 0.10 + rng.normal(0, 0.05, 30)), tok)
    c = units(tok * (hard - 0.30 + rng.normal(0, 0.05, 30)), tok)
    gap = U.difference_interval(base, a, b)
    assert gap["low"] > 0 and U.contains(gap)
    tie = U.difference_interval(base, a, c)
    assert tie["low"] <= 0 <= tie["high"]


def test_paired_interval_refuses_different_documents():
    with pytest.raises(ValueError, match="same documents"):
        U.drop_interval(units([1.0, 2.0], [10, 10]), units([1.0, 2.0], [10, 11]))


def test_per_document_sums_match_a_hand_loop(model_and_tok):
    model, tok = model_and_tok
    eos = tok.eos_token_id
    rng = np.random.default_rng(4)
    docs = [rng.integers(1, len(tok) - 1, n) for n in (30, 7, 90, 3, 45)]
    ids = np.concatenate([np.append(d, eos) for d in docs])
    res = perplexity(model, ids, 32, batch_size=3, eos_id=eos)
    doc = U.document_of(ids, eos)
    want_nll, want_tok = np.zeros(doc.max() + 1), np.zeros(doc.max() + 1)
    t = torch.as_tensor(ids)
    with torch.no_grad():
        for begin in range(0, len(ids), 32):
            x = t[begin : begin + 32]
            if len(x) < 2:
                continue
            nll = F.cross_entropy(model(x[None]).logits[0, :-1].float(), x[1:], reduction="none")
            for j, v in enumerate(nll.tolist()):
                want_nll[doc[begin + j + 1]] += v
                want_tok[doc[begin + j + 1]] += 1
    keep = want_tok > 0
    assert res.units["tokens"] == want_tok[keep].astype(int).tolist()
    np.testing.assert_allclose(res.units["nll"], want_nll[keep], rtol=1e-4)
    assert sum(res.units["nll"]) == pytest.approx(res.nll_sum, rel=1e-9)
    assert sum(res.units["tokens"]) == res.tokens


def test_the_recipe_reading_quotes_the_paired_gap_where_separate_intervals_overlap():
    """A variant a little better than the recipe on every document: their separate intervals against
    the base overlap (document difficulty widens both), the paired gap excludes zero, and the reading
    says so with the gap's own interval."""
    from cptlab.lab.experiments import reading

    rng = np.random.default_rng(5)
    n = 40
    tok = rng.integers(500, 3000, n)
    hard = rng.normal(5.0, 0.8, n)
    base_c, base_g = units(tok * hard, tok), units(tok * hard, tok)
    gain = rng.normal(0.2, 0.15, n)  # how much CPT helps differs by document, the same for both runs

    def variant(name, code_shift, gen_shift):
        c = units(tok * (hard - gain - code_shift + rng.normal(0, 0.003, n)), tok)
        g = units(tok * (hard + gen_shift + rng.normal(0, 0.005, n)), tok)
        ppl = lambda u, b: float(
            np.exp(np.sum(u["nll"]) / np.sum(u["tokens"])) / np.exp(np.sum(b["nll"]) / np.sum(b["tokens"]))
        )
        return {
            "name": name,
            "code_ppl_drop": 1 - ppl(c, base_c),
            "forgetting_ratio": ppl(g, base_g),
            "code_units": c,
            "general_units": g,
            "code_ppl_drop_ci": U.drop_interval(base_c, c),
            "forgetting_ratio_ci": U.ratio_interval(base_g, g),
        }

    recipe, nowarm = variant("recipe", 0.0, 0.02), variant("no warm-up", 0.01, 0.02)
    exp = {"variants": [recipe, nowarm], "baseline_units": {"code": base_c, "general": base_g}}
    a, b = recipe["code_ppl_drop_ci"], nowarm["code_ppl_drop_ci"]
    assert a["low"] <= b["high"] and b["low"] <= a["high"]  # the separate intervals overlap
    (line,) = reading(exp)
    gap = U.difference_interval(base_c, nowarm["code_units"], recipe["code_units"])
    assert gap["low"] > 0
    assert f"{gap['estimate'] * 100:+.1f} points [{gap['low'] * 100:+.1f}, {gap['high'] * 100:+.1f}]" in line
    assert "a gap the intervals can see for the gain" in line and "forgetting" not in line.split("see for")[1]
    del exp["baseline_units"]  # an older file: only the separate intervals, said so
    assert "not a paired test" in reading(exp)[0]
