"""Fused fast paths for GPT-2's two hot spots: the lm_head + cross-entropy, and the tanh-GELU.

The lm_head turns every hidden state into ``vocab`` logits: for a GPT-2 batch of 64 x 256 tokens
that is 3.3 GB of float32, written, log-softmaxed, read back and differentiated in separate passes.
``linear_cross_entropy`` computes the loss and, when gradients are wanted, both gradients in one
pass over chunks of rows (the Liger-kernel idea), so the whole logits never exist and backward is a
multiply by the incoming scalar. It is the default on CUDA. On the CPU, PyTorch's own log-softmax
kernel beats its logsumexp, so the default there is ``chunked_cross_entropy``: the plain lm_head and
cross-entropy, a chunk of rows at a time.

The math is the textbook one: loss = logsumexp(z) - z[target]; dloss/dz = softmax(z) - onehot(target).
Matrix products run in the autocast dtype when autocast is on (bf16 on a GPU), the softmax in float32.

The tanh-GELU: ``fast_gelu`` swaps transformers' eight-kernel ``gelu_new`` for PyTorch's fused one
while cptlab trains or evaluates; in evaluation on the CPU, ``inference_mlp`` goes further and folds
the GELU into the ``c_fc`` matrix product (one oneDNN kernel).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# Logit elements per chunk (rows x vocab) of the fused path: 64 MB of float32 on the CPU, 1 GB on a
# GPU (a GPT-2 batch of 16k tokens then takes three chunks, each a large GEMM).
CHUNK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}
# The vocabulary is padded to a multiple of this for the GEMMs (50257 -> 50304 for GPT-2, as nanoGPT
# does); the padded logits are -inf, so they add nothing to the loss or the gradients.
VOCAB_MULTIPLE = 64
# For the unfused path: rows of logits made at once, 16 MB of float32 (512 rows of the tiny preset's
# 8192-token vocabulary): in fp32, 128-row chunks made the lm_head's matrix products 15% slower. A
# chunk this size is reused from glibc's heap only once ``cptlab.speed.device.keep_freed_memory`` has run
# (every cptlab entry point does); otherwise each one is mapped, page-faulted and zeroed afresh.
CE_CHUNK_ELEMENTS = 1 << 22


def ce_chunk_rows(vocab: int) -> int:
    return max(64, CE_CHUNK_ELEMENTS // vocab)


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """Sum of ``cross_entropy(head(hidden), targets)`` made over chunks of rows: the same autograd
    graph as one call, without whole-batch float32 logits. ``reduction="none"``: each row's loss."""
    rows = ce_chunk_rows(head.weight.shape[0])
    parts = [
        F.cross_entropy(head(hidden[i : i + rows]).float(), targets[i : i + rows], reduction=reduction)
        for i in range(0, hidden.shape[0], rows)
    ]
    if reduction == "none":
        return torch.cat(parts)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _matmul_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, masked: bool, need_grad_hidden: bool, need_grad_weight: bool):
        n, v = hidden.shape[0], weight.shape[0]
        dtype = _matmul_dtype(hidden)
        pad = -v % VOCAB_MULTIPLE
        w = F.pad(weight.to(dtype), (0, 0, 0, pad))
        rows = max(1, CHUNK_ELEMENTS.get(hidden.device.type, CHUNK_ELEMENTS["cpu"]) // (v + pad))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_grad_hidden else None
        grad_weight = torch.zeros_like(w, dtype=torch.float32) if need_grad_weight else None
        for i in range(0, n, rows):
            h = hidden[i : i + rows].to(dtype)
            t = targets[i : i + rows]
            keep = t != IGNORE_INDEX if masked else None
            safe_t = torch.where(keep, t, 0) if masked else t
            cols = torch.arange(h.shape[0], device=h.device)
            logits = (w @ h.t()).float()  # [vocab, rows]
            if pad:
                logits[v:] = float("-inf")
            lse = torch.logsumexp(logits, dim=0)
            nll = lse - logits[safe_t, cols]
            total += (nll * keep).sum() if masked else nll.sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad_logits = logits.sub_(lse).exp_()  # softmax, in place
            grad_logits[safe_t, cols] -= 1.0
            if masked:
                grad_logits.mul_(keep)
            g = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[i : i + rows] = g.t() @ w
            if grad_weight is not None:
                grad_weight += g @ h
        ctx.save_for_backward(grad_hidden, grad_weight[:v] if grad_weight is not None else None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_out).to(ctx.dtypes[0]) if grad_hidden is not None else None
        gw = (grad_weight * grad_out).to(ctx.dtypes[1]) if grad_weight is not None else None
        return gh, gw, None, None, None, None


# Kept out of torch.compile's graphs: compiled on CUDA (torch 2.11) this Function's loss was right
# but its gradients were lost (``benchmarks/check_fused_compile.py cuda``), so it runs eagerly and
# the compiled model around it breaks its graph here.
@torch.compiler.disable
def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, masked: bool = True
) -> torch.Tensor:
    """Sum over rows of ``cross_entropy(hidden @ weight.T, targets)``, ignoring targets of -100
    (``masked=False`` promises there are none and skips the masking).

    ``hidden`` [N, D], ``weight`` [V, D] (an lm_head without bias), ``targets`` [N]. Returns a float32
    scalar; differentiable with respect to ``hidden`` and ``weight``."""
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"shapes do not fit: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets "
            f"{tuple(targets.shape)}"
        )
    grad = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(
        hidden, weight, targets, masked, grad and hidden.requires_grad, grad and weight.requires_grad
    )


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def split_lm_head(model) -> tuple[nn.Module, nn.Linear] | None:
    """(transformer body, lm_head) of a GPT-2 causal LM (also inside a peft wrapper), else None:
    other architectures keep the plain ``model(...).logits`` path."""
    inner = unwrap_peft(model)
    if getattr(getattr(inner, "config", None), "model_type", None) != "gpt2" or not hasattr(inner, "transformer"):
        return None
    head = inner.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    return inner.transformer, head


class CausalLMLoss(nn.Module):
    """Summed next-token cross-entropy of a batch of windows, as a module: DDP and ``torch.compile``
    wrap it whole, so the loss is part of the synchronised, compiled forward.

    ``fused`` picks ``linear_cross_entropy`` (the default on CUDA, where the logits of a GPT-2 batch
    run to gigabytes) or ``chunked_cross_entropy`` (the default on the CPU, where PyTorch's
    log-softmax kernel beats the fused path's logsumexp). Both skip the last position of each
    window, which has no next token to predict."""

    def __init__(self, model: nn.Module, fused: bool | None = None):
        super().__init__()
        self.model = model
        self.parts = split_lm_head(model)
        self.fused = fused

    def forward(self, x: torch.Tensor, scored: int | None = None, per_token: bool = False) -> torch.Tensor:
        """``scored``: score only the last ``scored`` tokens of each window (evaluation's sliding
        windows); by default every token after the first. ``per_token``: the ``[rows, scored]``
        losses (evaluation's per-document sums) instead of their sum."""
        L = x.shape[1]
        scored = L - 1 if scored is None else scored
        targets = x[:, L - scored :].reshape(-1)
        reduction = "none" if per_token else "sum"
        if self.parts is None:
            logits = self.model(input_ids=x).logits[:, L - 1 - scored : L - 1]
            out = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction=reduction)
            return out.view(x.shape[0], scored) if per_token else out
        body, head = self.parts
        hidden = body(input_ids=x, use_cache=False).last_hidden_state[:, L - 1 - scored : L - 1]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if per_token:
            return chunked_cross_entropy(hidden, head, targets, reduction="none").view(x.shape[0], scored)
        if self.fused if self.fused is not None else x.is_cuda:
            return linear_cross_entropy(hidden, head.weight, targets, masked=False)
        return chunked_cross_entropy(hidden, head, targets)


@contextlib.contextmanager
def fast_gelu(model: nn.Module):
    """Swap transformers' Python ``gelu_new`` (eight elementwise kernels) for PyTorch's fused
    ``gelu(approximate="tanh")``, the same formula (transformers' own ``gelu_pytorch_tanh``),
    for the duration of a block; the model is given back unchanged."""
    from transformers.activations import NewGELUActivation

    swapped = []
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, nn.GELU(approximate="tanh"))
                swapped.append((module, name, child))
    try:
        yield model
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)


class _LinearTanhGelu(nn.Module):
    """GPT-2's ``c_fc`` (a Conv1D) and its tanh-GELU as one oneDNN matrix product with the GELU applied
    to each tile as it is written (the kernel PyTorch's own CPU compiler emits). Inference only."""

    def __init__(self, conv: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.weight = conv.weight.detach().t().contiguous().to(dtype)  # Conv1D stores [in, out]
        self.bias = conv.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("cptlab.speed.fused.inference_mlp is for evaluation only: run it under torch.no_grad()")
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, x.shape[-1]).to(self.weight.dtype), self.weight, self.bias, "gelu", [], "tanh"
        )
        return y.view(*x.shape[:-1], y.shape[-1])


def _onednn_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN's fused linear is in this torch, and for bf16 this CPU runs oneDNN's bf16 kernels."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return check is not None and bool(check())
    return dtype == torch.float32


@contextlib.contextmanager
def inference_mlp(model: nn.Module, dtype: torch.dtype | None = None):
    """On the CPU, while a block runs without gradients, compute each GPT-2 MLP's ``c_fc`` and tanh-GELU
    as one oneDNN kernel at ``dtype`` (the autocast dtype; None: the weights' own). PyTorch's CPU tanh is
    slow and a separate GELU reads the activations again: this saves 6-8% of an evaluation here.
    Anything else (a CUDA model, a LoRA-wrapped c_fc, another architecture) is left as it is."""
    from transformers.activations import NewGELUActivation
    from transformers.pytorch_utils import Conv1D

    swapped = []
    weight = next(model.parameters())
    if weight.device.type == "cpu" and _onednn_linear_available(dtype or weight.dtype):
        for module in model.modules():
            fc, act = getattr(module, "c_fc", None), getattr(module, "act", None)
            gelu_tanh = type(act) is NewGELUActivation or (type(act) is nn.GELU and act.approximate == "tanh")
            if type(fc) is Conv1D and gelu_tanh:
                module.c_fc, module.act = _LinearTanhGelu(fc, dtype or fc.weight.dtype), nn.Identity()
                swapped.append((module, fc, act))
    try:
        yield model
    finally:
        for module, fc, act in swapped:
            module.c_fc, module.act = fc, act
