"""Causal self-attention for bf16 on the CPU, registered with transformers' ``AttentionInterface``.

PyTorch's CPU flash-attention kernel runs small heads (the tiny preset's: 64 wide, 256 tokens) far
below the CPU's bf16 matrix speed, and its causal flag saves nothing there. Two batched bf16 matrix
products with the softmax between them (transformers' eager attention, with the scale and the causal
mask folded into the first product) took about 40% less time forward and 40-50% less forward +
backward on this lab's 2-core CPU. Anything else (fp32, a GPU, a padding mask, dropout, a KV cache)
goes to ``sdpa`` unchanged.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cptlab.speed.fused import unwrap_peft

NAME = "cptlab_cpu"
_BIAS: dict[int, torch.Tensor] = {}


def _causal_bias(length: int) -> torch.Tensor:
    """[length, length] bf16: 0 on and below the diagonal, -inf above (a token sees no later one)."""
    if length not in _BIAS:
        _BIAS[length] = torch.full((length, length), float("-inf")).triu_(1).to(torch.bfloat16)
    return _BIAS[length]


def cpu_causal_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``query``/``key``/``value`` [batch, heads, tokens, head_dim]; answers [batch, tokens, heads, head_dim].

    The scores are rounded to bf16 once, after the scale and the mask (``baddbmm`` applies both to the
    float32 accumulator); the softmax runs in float32 inside its kernel and writes bf16 weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain_causal = (
        attention_mask is None
        and dropout == 0.0
        and getattr(module, "is_causal", False)
        and query.device.type == "cpu"
        and query.dtype == key.dtype == value.dtype == torch.bfloat16
        and query.shape[2] == key.shape[2] > 1
        and query.shape[1] == key.shape[1]
    )
    if not plain_causal:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, h, t, d = query.shape
    scale = d**-0.5 if scaling is None else scaling
    q, k, v = (x.reshape(b * h, t, d) for x in (query, key, value))
    scores = torch.baddbmm(_causal_bias(t).expand(b * h, t, t), q, k.transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(scores, dim=-1), v)
    return out.view(b, h, t, d).transpose(1, 2), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, cpu_causal_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # sdpa's masks: none at all for plain causal windows


@contextlib.contextmanager
def cpu_attention(model: nn.Module, dtype: torch.dtype | None):
    """While a block runs, a CPU model under bf16 autocast attends with ``cpu_causal_attention``; the
    model's own attention implementation is set back afterwards. Other models are left as they are."""
    inner = unwrap_peft(model)
    config = getattr(inner, "config", None)
    before = getattr(config, "_attn_implementation", None)
    weight = next(model.parameters())
    use = (
        dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and before == "sdpa"
        and getattr(config, "model_type", None) == "gpt2"
        and hasattr(inner, "set_attn_implementation")
    )
    if use:
        _register()
        inner.set_attn_implementation(NAME)
    try:
        yield model
    finally:
        if use:
            inner.set_attn_implementation(before)
