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

from .attention import cpu_attention
from .config import LabConfig
from .corpus import sample_windows
from .device import autocast
from .fused import CausalLMLoss, fast_gelu


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
    """AdamW with decay on matrices only (nanoGPT's split); the fused kernel on CUDA and CPU alike
    (what ``transformers.Trainer`` uses by default too)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.cpt_lr, betas=tuple(cfg.betas), fused=device.type in ("cuda", "cpu"))


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


def _flush(pending: list[tuple], result: "TrainResult", all_reduce_sum, cfg: LabConfig) -> None:
    """Bring the pending steps' losses and norms to the host in one sync and append their log rows;
    stop the run at the first non-finite loss."""
    if not pending:
        return
    values = torch.stack([torch.stack([p[4].float(), p[5].float()]) for p in pending])
    values[:, 0] = all_reduce_sum(values[:, 0].contiguous())
    for (step, lr, step_tokens, tokens, _, _), (loss_sum, grad_norm) in zip(pending, values.tolist()):
        loss_value = loss_sum / step_tokens
        if not math.isfinite(loss_value):
            pending.clear()
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {step} (lr {lr:.3g}): the run was stopped. "
                f"Lower the learning rate (cpt_lr={cfg.cpt_lr}) or check the data for broken documents."
            )
        result.log.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "step_tokens": step_tokens})
    pending.clear()


def learning_rate(lr_fn, step: int, cfg: LabConfig) -> float:
    lr = lr_fn(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{getattr(lr_fn, '__name__', 'lr_fn')}({step}, ...) returned {lr!r}: a learning rate is a finite number >= 0; run its check cell")
    return float(lr)


def learner_step(step_fn, model, batch: torch.Tensor, opt, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = step_fn(model, batch, opt, max_norm)
    try:
        loss, norm = out
        loss, norm = torch.as_tensor(loss).detach().float().reshape(()), torch.as_tensor(norm).detach().float().reshape(())
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{getattr(step_fn, '__name__', 'step_fn')} returned {type(out).__name__}; it should return "
                         "(loss, pre-clip gradient norm): run its check cell") from None
    return loss, norm


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
    on_step: Callable[[int, torch.nn.Module], bool | None] | None = None,
    checkpointing: Checkpointing | None = None,
    lr_fn: Callable[[int, float, int, int], float] | None = None,
    step_fn: Callable | None = None,
) -> TrainResult:
    """Continue pre-training ``model`` on random windows of ``train_stream`` (a 1-D stream, or
    step 2's ``[n_blocks, block_size]`` blocks).

    ``batch_fn(step, generator)`` may supply each step's micro-batches (replay mixing does);
    ``on_step(step, model)`` runs after each optimizer step (the forgetting curve does);
    returning True stops the run there (a retention floor can).
    ``lr_fn(step, peak_lr, warmup_steps, max_steps)`` and ``step_fn(model, batch, optimizer,
    max_norm) -> (loss, pre-clip norm)`` are the learner's schedule and optimizer step (notebook 3):
    the loop keeps its data, logging, checkpoints and fast paths around them.
    """
    from .distributed import all_reduce_sum, is_distributed, rank, world_size

    model.to(device)
    model.train()
    ddp = is_distributed()
    world, me = world_size(), rank()
    if step_fn is not None and (ddp or cfg.grad_accum != 1 or cfg.torch_compile):
        raise ValueError("a learner's optimizer step runs one micro-batch per step in one process: "
                         "set grad_accum=1 and torch_compile=false, and run without torchrun")
    if ddp and cfg.batch_size < world:
        raise ValueError(f"batch_size={cfg.batch_size} is smaller than the {world} processes: each needs a share of every micro-batch")
    # The loss is a module around the model, so DDP synchronises it and torch.compile sees it whole.
    # Under torchrun, DDP averages gradients across ranks; the loss below is scaled to undo that.
    loss_module = CausalLMLoss(model, cfg.fused_ce)
    wrapped = torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None) if ddp else loss_module
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
    log_every = cfg.log_every or (10 if device.type == "cuda" else 1)
    pending: list[tuple] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start - 1, desc=desc)
    # the same tanh-GELU as one fused kernel; bf16 attention on the CPU as two matrix products
    with fast_gelu(model), cpu_attention(model, amp_dtype):
        for step in range(start, cfg.max_steps + 1):
            lr = (learning_rate(lr_fn, step, cfg) if lr_fn is not None
                  else cfg.cpt_lr * lr_multiplier(step, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
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
            if step_fn is not None:  # the learner's: forward, backward, clip, update, zero the gradients
                with autocast(device, amp_dtype):
                    loss, grad_norm = learner_step(step_fn, model, micro[0].to(device), opt, cfg.grad_clip)
                loss_sum = loss * step_tokens
            else:
                loss_sum = torch.zeros((), device=device)
                for i, x in enumerate(micro):
                    x = x.to(device, non_blocking=True)
                    # gradients are all-reduced once per step, on the last micro-batch only
                    sync = wrapped.no_sync() if ddp and i < len(micro) - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast(device, amp_dtype):
                            loss = forward(x)
                        (loss * world / step_tokens).backward()
                    loss_sum += loss.detach()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            result.tokens += step_tokens
            pending.append((step, lr, step_tokens, result.tokens, loss_sum, grad_norm))
            # The host waits for the device only at log points: the loss and norm stay tensors until then.
            at_checkpoint = checkpointing is not None and step % checkpointing.every == 0
            if step % log_every == 0 or step == cfg.max_steps or at_checkpoint:
                _flush(pending, result, all_reduce_sum, cfg)
            stop = bool(on_step(step, model)) if on_step is not None else False
            if at_checkpoint and step < cfg.max_steps and not stop:
                result.seconds = time.perf_counter() - t0
                checkpointing.save(step, model, opt, gen, result)
            if bar is not None:
                if not pending:
                    bar.set_postfix(loss=f"{result.log[-1]['loss']:.3f}", lr=f"{lr:.2e}")
                bar.update(1)
            if stop:
                break
    _flush(pending, result, all_reduce_sum, cfg)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
