"""The bf16 CPU attention against a float64 softmax written out by hand, and its place in a model."""

import pytest
import torch
import torch.nn.functional as F

from cptlab.speed import attention
from cptlab.speed.attention import cpu_attention, cpu_causal_attention


class _Causal(torch.nn.Module):
    is_causal = True
    training = False


def _by_hand(q, k, v, scale):
    """Causal attention in float64: softmax(q k^T * scale, masked above the diagonal) v."""
    q, k, v = (x.double() for x in (q, k, v))
    t = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def _qkv(b=3, h=2, t=17, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 3, h, d, generator=g).to(torch.bfloat16)  # laid out as GPT-2's c_attn split: not contiguous
    return tuple(y.transpose(1, 2) for y in x.unbind(2))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_output_and_gradients_match_a_float64_loop(scale):
    q, k, v = (x.detach().requires_grad_() for x in _qkv())
    s = q.shape[-1] ** -0.5 if scale is None else scale
    out, weights = cpu_causal_attention(_Causal(), q, k, v, None, scaling=scale)
    assert weights is None and out.shape == (3, 17, 2, 8) and out.dtype == torch.bfloat16
    ref = _by_hand(q, k, v, s)
    err = (out.double() - ref).abs()
    sdpa_err = (F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s).transpose(1, 2).double() - ref).abs()
    assert err.max() < 0.03 and err.mean() < 4 * sdpa_err.mean() + 1e-3  # bf16 rounding, as sdpa's own bf16

    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    grads = torch.autograd.grad(out, (q, k, v), g)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    refs = torch.autograd.grad(_by_hand(q64, k64, v64, s), (q64, k64, v64), g.double())
    for got, want in zip(grads, refs):
        assert (got.double() - want).abs().max() < 0.05 * want.abs().max() + 0.02


def test_the_first_token_sees_only_itself():
    q, k, v = _qkv(t=5)
    out, _ = cpu_causal_attention(_Causal(), q, k, v, None)
    assert torch.equal(out[:, 0], v[:, :, 0])  # one key: weight 1 on it, exactly


def test_anything_else_goes_to_sdpa(monkeypatch):
    from transformers.integrations import sdpa_attention

    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv()
    mask = torch.zeros(3, 1, 17, 17, dtype=torch.bool)
    cpu_causal_attention(_Causal(), q, k, v, mask)  # a padding mask
    cpu_causal_attention(_Causal(), q.float(), k.float(), v.float(), None)  # fp32
    cpu_causal_attention(_Causal(), q, k, v, None, dropout=0.1)  # dropout
    cpu_causal_attention(_Causal(), q[:, :, -1:], k, v, None)  # one new token against a cache
    assert len(calls) == 4
    cpu_causal_attention(_Causal(), q, k, v, None)
    assert len(calls) == 4


def test_model_under_the_context_uses_it_then_gets_sdpa_back(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.config._attn_implementation == "sdpa"
    calls = []
    real = attention.cpu_causal_attention
    monkeypatch.setattr(attention, "cpu_causal_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randint(0, 50, (2, 30))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=x).logits.float()
        with cpu_attention(model, torch.bfloat16):
            assert model.config._attn_implementation == attention.NAME
            during = model(input_ids=x).logits.float()
    assert len(calls) == model.config.n_layer
    assert model.config._attn_implementation == "sdpa"
    assert (during - before).abs().max() < 0.05 * before.abs().max()  # bf16 rounding, not another function
    with cpu_attention(model, None):  # fp32: left alone
        assert model.config._attn_implementation == "sdpa"
