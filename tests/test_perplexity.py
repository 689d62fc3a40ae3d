"""Perplexity against an independent loop: Hugging Face's "Perplexity of fixed-length models"
procedure written out by hand, one window at a time, with the model's own loss."""

import math

import numpy as np
import pytest
import torch
from conftest import CODE, ENGLISH

from cptlab.model.perplexity import perplexity


def reference_nll(model, ids, block, stride=None, max_tokens=None):
    """Hand-written HF-guide loop: labels before the new tokens are -100, loss x scored tokens."""
    ids = torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)[None]
    stride = stride or block
    n = ids.shape[1]
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + block, n)
        trg_len = end - prev_end
        x = ids[:, begin:end]
        labels = x.clone()
        labels[:, :-trg_len] = -100
        valid = int((labels[:, 1:] != -100).sum())
        if valid > 0:
            with torch.no_grad():
                loss = model(x, labels=labels).loss
            nll += float(loss) * valid
            count += valid
        prev_end = end
        if end == n:
            break
    return nll, count


@pytest.fixture(scope="module")
def ids(model_and_tok):
    _, tok = model_and_tok
    return np.asarray(tok(ENGLISH + CODE + ENGLISH, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("block,stride", [(64, None), (64, 16), (48, 48), (32, 7), (5, None)])
def test_matches_reference_loop(model_and_tok, ids, block, stride):
    model, _ = model_and_tok
    res = perplexity(model, ids, block, stride=stride, batch_size=3)
    nll, count = reference_nll(model, ids, block, stride)
    assert res.tokens == count
    assert res.nll_sum == pytest.approx(nll, rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_short_last_window_counts_and_token_count(model_and_tok, ids):
    model, _ = model_and_tok
    n = 64 * 3 + 5  # three full windows and a last one of 5 tokens
    res = perplexity(model, ids[:n], 64)
    assert res.tokens == 63 * 3 + 4
    nll, count = reference_nll(model, ids[:n], 64)
    assert count == res.tokens and res.nll_sum == pytest.approx(nll, rel=1e-5)
    # a last window of a single token scores nothing
    assert perplexity(model, ids[: 64 * 2 + 1], 64).tokens == 63 * 2


def test_token_weighted_not_mean_of_windows(model_and_tok, ids):
    model, _ = model_and_tok
    n = 64 + 3
    res = perplexity(model, ids[:n], 64)
    a, ca = reference_nll(model, ids[:64], 64)
    b, cb = reference_nll(model, ids[64:n], 64)
    assert res.ppl == pytest.approx(math.exp((a + b) / (ca + cb)), rel=1e-5)
    assert res.ppl != pytest.approx(math.exp((a / ca + b / cb) / 2), rel=1e-4)


def test_max_tokens_is_a_deterministic_prefix(model_and_tok, ids):
    model, _ = model_and_tok
    capped = perplexity(model, ids, 32, max_tokens=100)
    prefix = perplexity(model, ids[:100], 32)
    assert capped.nll_sum == pytest.approx(prefix.nll_sum, rel=1e-9) and capped.tokens == prefix.tokens
    assert capped.protocol["max_tokens"] == 100 and capped.protocol["input_tokens"] == len(ids)


def test_block_above_context_is_a_clear_error(model_and_tok, ids):
    model, _ = model_and_tok
    with pytest.raises(ValueError, match="above the model's context"):
        perplexity(model, ids, 65)


def test_bad_stride_and_empty_input(model_and_tok):
    model, _ = model_and_tok
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, np.arange(100), 32, stride=33)
    with pytest.raises(ValueError, match="nothing to score"):
        perplexity(model, np.arange(1), 32)
