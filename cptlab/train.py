"""The CPT loop, top to bottom: AdamW, linear warm-up then cosine decay, gradient clipping,
gradient accumulation normalised by tokens, one log row per optimizer step."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import LabConfig
from .corpus import sample_windows
from .device import autocast


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The schedule of ``transformers.get_cosine_schedule_with_warmup`` (0.5 cycle), optionally
    floored at ``min_lr_ratio``. Optimizer step k (1-based) uses ``lr_multiplier(k)``, so the
    warm-up peaks exactly at step ``warmup_steps`` and the last step reaches the floor."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def make_optimizer(model: torch.nn.Module, cfg: LabConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (nanoGPT's split); fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.cpt_lr, betas=tuple(cfg.betas), fused=device.type == "cuda")


def token_loss_sum(model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of a batch of windows and how many tokens it scored."""
    logits = model(input_ids=x).logits[:, :-1]
    targets = x[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
    return loss, targets.numel()


@dataclass
class TrainResult:
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def train(
    model: torch.nn.Module,
    train_stream: np.ndarray,
    cfg: LabConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "CPT",
    batch_fn: Callable[[int, torch.Generator], list[torch.Tensor]] | None = None,
    on_step: Callable[[int, torch.nn.Module, dict], None] | None = None,
) -> TrainResult:
    """Continue pre-training ``model`` on random windows of ``train_stream``.

    ``batch_fn(step, generator)`` may supply each step's micro-batches (replay mixing does);
    ``on_step(step, model, row)`` runs after each optimizer step (the forgetting curve does).
    """
    model.to(device)
    model.train()
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, desc=desc)
    for step in range(1, cfg.max_steps + 1):
        lr = cfg.cpt_lr * lr_multiplier(step, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        if batch_fn is not None:
            micro = batch_fn(step, gen)
        else:
            micro = [sample_windows(train_stream, cfg.block_size, cfg.batch_size, gen) for _ in range(cfg.grad_accum)]
        # Normalise by the tokens of the whole step, not per micro-batch: accumulation then
        # equals one large batch exactly (transformers PR #34191's lesson).
        step_tokens = sum(x.shape[0] * (x.shape[1] - 1) for x in micro)
        loss_sum = torch.zeros((), device=device)
        for x in micro:
            x = x.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                loss, _ = token_loss_sum(model, x)
            (loss / step_tokens).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        loss_value = float(loss_sum.item()) / step_tokens
        if not math.isfinite(loss_value):
            opt.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {step} (lr {lr:.3g}): the run was stopped. "
                f"Lower the learning rate (cpt_lr={cfg.cpt_lr}) or check the data for broken documents."
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.tokens += step_tokens
        row = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tokens": result.tokens, "step_tokens": step_tokens}
        result.log.append(row)
        if on_step is not None:
            on_step(step, model, row)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
