"""The CPT loop, top to bottom: AdamW, linear warm-up then cosine decay, gradient clipping,
gradient accumulation normalised by tokens, one log row per optimizer step."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
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
    """Summed next-token cross-entropy of a batch of windows and how many tokens it scored.

    The targets are shifted instead of the logits (the last position is ignored), so the large
    logits tensor is never copied; cross-entropy runs in float32 (autocast's rule for it)."""
    logits = model(input_ids=x).logits
    targets = F.pad(x[:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum", ignore_index=-100)
    return loss, x.shape[0] * (x.shape[1] - 1)


@dataclass
class Checkpointing:
    """Save model, optimizer, RNG states, data position and log every ``every`` steps (atomically);
    resume from the last one. ``extra`` is the caller's JSON state (the forgetting curve), saved and
    restored with it. ``key`` guards against resuming a run with another configuration."""

    folder: Path
    every: int = 25
    key: str = ""
    extra: dict = field(default_factory=dict)

    def exists(self) -> bool:
        from .cache import is_complete

        return is_complete(self.folder)

    def save(self, step: int, model, opt, gen: torch.Generator, result: "TrainResult") -> None:
        from safetensors.torch import save_model

        from .cache import atomic_dir

        with atomic_dir(Path(self.folder)) as tmp:
            save_model(model, str(tmp / "model.safetensors"))
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            rng = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            meta = {"step": step, "key": self.key, "log": result.log, "tokens": result.tokens, "seconds": result.seconds, "extra": self.extra}
            (tmp / "meta.json").write_text(json.dumps(meta))

    def load(self, model, opt, gen: torch.Generator, result: "TrainResult") -> int:
        """Restore everything; return the last completed step. Only tensors are unpickled
        (``weights_only=True``), and the weights come from safetensors."""
        from safetensors.torch import load_model

        folder = Path(self.folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != self.key:
            raise RuntimeError(f"the checkpoint in {folder} belongs to another configuration: delete it or start a new run folder")
        load_model(model, str(folder / "model.safetensors"))
        opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        rng = torch.load(folder / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        result.log, result.tokens, result.seconds = meta["log"], meta["tokens"], meta["seconds"]
        self.extra.clear()
        self.extra.update(meta["extra"])
        return int(meta["step"])


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
    on_step: Callable[[int, torch.nn.Module, dict], bool | None] | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Continue pre-training ``model`` on random windows of ``train_stream``.

    ``batch_fn(step, generator)`` may supply each step's micro-batches (replay mixing does);
    ``on_step(step, model, row)`` runs after each optimizer step (the forgetting curve does);
    returning True stops the run there (a retention floor can).
    """
    from .distributed import all_reduce_sum, is_distributed, rank, world_size

    model.to(device)
    model.train()
    ddp = is_distributed()
    world, me = world_size(), rank()
    if ddp and cfg.batch_size < world:
        raise ValueError(f"batch_size={cfg.batch_size} is smaller than the {world} processes: each needs a share of every micro-batch")
    # Under torchrun, DDP averages gradients across ranks; the loss below is scaled to undo that.
    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else model
    forward = torch.compile(wrapped) if cfg.torch_compile else wrapped
    # On a GPU the token stream lives on the device: a batch is one gather, not B host copies.
    device_stream = torch.from_numpy(train_stream.astype(np.int64)).to(device) if device.type == "cuda" and batch_fn is None else None
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult()
    start = 1
    if checkpointing is not None and checkpointing.exists():
        start = checkpointing.load(model, opt, gen, result) + 1
    t0 = time.perf_counter() - result.seconds
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start - 1, desc=desc)
    for step in range(start, cfg.max_steps + 1):
        lr = cfg.cpt_lr * lr_multiplier(step, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        if batch_fn is not None:
            micro = batch_fn(step, gen)
        else:
            micro = [sample_windows(train_stream, cfg.block_size, cfg.batch_size, gen, device_stream) for _ in range(cfg.grad_accum)]
        # Normalise by the tokens of the whole step, not per micro-batch: accumulation then
        # equals one large batch exactly (transformers PR #34191's lesson).
        step_tokens = sum(x.shape[0] * (x.shape[1] - 1) for x in micro)
        if ddp:  # every rank drew the same global batch; each keeps its own share of every micro-batch
            micro = [x[me::world] for x in micro]
        loss_sum = torch.zeros((), device=device)
        for i, x in enumerate(micro):
            x = x.to(device, non_blocking=True)
            # gradients are all-reduced once per step, on the last micro-batch only
            sync = wrapped.no_sync() if ddp and i < len(micro) - 1 else contextlib.nullcontext()
            with sync:
                with autocast(device, amp_dtype):
                    loss, _ = token_loss_sum(forward, x)
                (loss * world / step_tokens).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        loss_value = float(all_reduce_sum(loss_sum).item()) / step_tokens
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
        stop = bool(on_step(step, model, row)) if on_step is not None else False
        if checkpointing is not None and step % checkpointing.every == 0 and step < cfg.max_steps and not stop:
            result.seconds = time.perf_counter() - t0
            checkpointing.save(step, model, opt, gen, result)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
        if stop:
            break
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
