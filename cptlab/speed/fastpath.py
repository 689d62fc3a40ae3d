"""The fast paths behind one door. A loop enters ``fast_paths`` once and reads as if they were
not there: PyTorch's fused tanh-GELU in place of transformers' eight-kernel one, bf16 attention on
the CPU as two batched matrix products, and in evaluation the MLP's ``c_fc`` + GELU as one oneDNN
kernel inside a single autocast region (so each weight is cast to bf16 once)."""

from __future__ import annotations

import contextlib

import torch

from cptlab.speed.attention import cpu_attention
from cptlab.speed.device import autocast
from cptlab.speed.fused import fast_gelu, inference_mlp


@contextlib.contextmanager
def fast_paths(
    model: torch.nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    evaluation: bool,
    fused_mlp: bool = True,
):
    """``evaluation``: also the autocast region around the whole block (training autocasts each
    forward pass itself, backward outside it); ``fused_mlp`` only where no gradient is ever needed."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(fast_gelu(model))
        if evaluation and fused_mlp:
            stack.enter_context(inference_mlp(model, amp_dtype))
        stack.enter_context(cpu_attention(model, amp_dtype))
        if evaluation:
            stack.enter_context(autocast(device, amp_dtype))
        yield model
