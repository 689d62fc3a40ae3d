"""How much of the machine a run uses: model FLOPs per token, the device's peak, and the model FLOPs
utilisation (MFU) they give with a run's tokens per second (PaLM's definition, nanoGPT's estimate).

A training token costs 6N FLOPs for the weights (2N forward, 4N backward: the gradients with respect
to both the activations and the weights) plus 12 L d T for attention (the scores and the weighted
sum, forward and backward, each token against up to T positions). N counts every weight a token is
multiplied by once: GPT-2's lm_head is its token embedding (tied), and the position table is a
lookup, not a product, so it is left out.

The peak is the vendor's dense figure for the precision the run computes in; a CPU has no such
number a program can read, so it is measured: the best of a few large matrix products.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) peaks in FLOP/s, by the name torch.cuda.get_device_name() contains.
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70e12, "fp32": 31.2e12},
    "T4": {"bf16": 65e12, "fp32": 8.1e12},  # fp16 tensor cores; T4 has no bf16
}


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs of one token of a GPT-2 at ``block_size`` (the reference of notebook 3's)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return float(6 * n + 12 * c.n_layer * c.n_embd * block_size)


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def matmul_peak(device: torch.device, dtype: torch.dtype | None, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square matrix products at the run's precision: a CPU's
    practical peak (with bf16 autocast, the product runs in bf16)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms the kernels up
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def model_flops_utilization(
    tokens_per_second: float, flops_per_token: float, peak_flops: dict[str, float], precision: str
) -> float:
    """MFU: the FLOP/s the model needed at the run's speed over the peak of the precision it ran in
    (the reference of notebook 3's ``mfu``)."""
    achieved = tokens_per_second * flops_per_token
    return achieved / peak_flops[precision]


def device_peaks(device: torch.device) -> dict[str, tuple[float, str]]:
    """Both precisions' peaks, ``{"fp32": (FLOP/s, source), "bf16": ...}``."""
    return {name: device_peak(device, dtype) for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}


def device_peak(device: torch.device, dtype: torch.dtype | None) -> tuple[float, str]:
    """``(FLOP/s, where it comes from)``: the card's dense figure on a known GPU, else measured."""
    prec = precision_name(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[prec], f"{name} dense {prec} peak (datasheet)"
    peak = matmul_peak(device, dtype)
    return peak, f"measured: best 1024x1024 {prec} matrix product on this {device.type}"
