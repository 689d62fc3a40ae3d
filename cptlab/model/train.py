"""The CPT loop, top to bottom: AdamW, linear warm-up then cosine decay, gradient clipping,
gradient accumulation normalised by tokens, one log row per optimizer step."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from cptlab.core.config import LabConfig
from cptlab.core.distributed import all_reduce_sum, is_distributed, rank, world_size
from cptlab.core.files import atomic_dir, is_complete
from cptlab.core.progress import progress_bar
from cptlab.data.corpus import sample_windows
from cptlab.speed.device import autocast
from cptlab.speed.fastpath import fast_paths
from cptlab.speed.fused import CausalLMLoss


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
        return is_complete(self.folder)

    def save(self, step: int, model, opt, gen: torch.Generator, result: "TrainResult") -> None:
        with atomic_dir(Path(self.folder)) as tmp:
            save_model(model, str(tmp / "model.safetensors"))
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            rng = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            meta = {
                "step": step,
                "key": self.key,
                "log": result.log,
                "tokens": result.tokens,
                "seconds": result.seconds,
                "extra": self.extra,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))

    def load(self, model, opt, gen: torch.Generator, result: "TrainResult") -> int:
        """Restore everything; return the last completed step. Only tensors are unpickled
        (``weights_only=True``), and the weights come from safetensors."""
        folder = Path(self.folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"the checkpoint in {folder} is unreadable ({type(exc).__name__}): delete that folder, or "
                "run with --force to start over"
            ) from None
        if meta.get("key") != self.key:
            raise RuntimeError(
                f"the checkpoint in {folder} belongs to another configuration: delete it or start a new run folder"
            )
        try:
            load_model(model, str(folder / "model.safetensors"))
            opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
            rng = torch.load(folder / "rng.pt", weights_only=True)
        except Exception as exc:  # a torn or tampered checkpoint: say how to go on, not torch's internals
            raise RuntimeError(
                f"the checkpoint in {folder} is corrupt ({type(exc).__name__}): delete that folder to redo "
                "step 3 from its start, or run with --force to start the whole run over"
            ) from None
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        result.log, result.tokens, result.seconds = meta["log"], meta["tokens"], meta["seconds"]
        self.extra.clear()
        self.extra.update(meta["extra"])
        return int(meta["step"])


@dataclass
class LogRow:
    """One optimizer step as the results file logs it."""

    step: int
    loss: float  # mean next-token loss of the step's tokens
    lr: float
    grad_norm: float  # global gradient norm before clipping
    tokens: int  # tokens seen so far
    step_tokens: int


@dataclass
class _Pending:
    """A step whose loss and norm are still on the device (read at the next log point)."""

    step: int
    lr: float
    step_tokens: int
    tokens: int
    loss_sum: torch.Tensor
    grad_norm: torch.Tensor


def _flush(pending: list[_Pending], result: "TrainResult", cfg: LabConfig) -> None:
    """Bring the pending steps' losses and norms to the host in one sync and append their log rows;
    stop the run at the first non-finite loss."""
    if not pending:
        return
    values = torch.stack([torch.stack([p.loss_sum.float(), p.grad_norm.float()]) for p in pending])
    values[:, 0] = all_reduce_sum(values[:, 0].contiguous())
    for p, (loss_sum, grad_norm) in zip(pending, values.tolist()):
        loss = loss_sum / p.step_tokens
        if not math.isfinite(loss):
            pending.clear()
            raise TrainingDivergedError(
                f"loss became {loss} at step {p.step} (lr {p.lr:.3g}): the run was stopped. "
                f"Lower the learning rate (cpt_lr={cfg.cpt_lr}) or check the data for broken documents."
            )
        result.log.append(asdict(LogRow(p.step, loss, p.lr, grad_norm, p.tokens, p.step_tokens)))
    pending.clear()


def learning_rate(lr_fn, step: int, cfg: LabConfig) -> float:
    """The rate of optimizer step ``step``: the recipe's schedule, or the learner's ``lr_fn``."""
    if lr_fn is None:
        return cfg.cpt_lr * lr_multiplier(step, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    lr = lr_fn(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(
            f"{getattr(lr_fn, '__name__', 'lr_fn')}({step}, ...) returned {lr!r}: a learning rate is a finite number "
            ">= 0; run its check cell"
        )
    return float(lr)


def learner_step(step_fn, model, batch: torch.Tensor, opt, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = step_fn(model, batch, opt, max_norm)
    try:
        loss, norm = out
        loss, norm = (
            torch.as_tensor(loss).detach().float().reshape(()),
            torch.as_tensor(norm).detach().float().reshape(()),
        )
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{getattr(step_fn, '__name__', 'step_fn')} returned {type(out).__name__}; it should return "
            "(loss, pre-clip gradient norm): run its check cell"
        ) from None
    return loss, norm


@dataclass
class TrainResult:
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


class ReferenceStep:
    """cptlab's optimizer step: micro-batches through the loss module (so DDP and torch.compile see
    model and loss whole), gradients normalised by the tokens of the whole step, clip, AdamW."""

    def __init__(self, model: torch.nn.Module, cfg: LabConfig, device: torch.device, amp_dtype: torch.dtype | None):
        self.ddp, self.world, self.rank = is_distributed(), world_size(), rank()
        if self.ddp and cfg.batch_size < self.world:
            raise ValueError(
                f"batch_size={cfg.batch_size} is smaller than the {self.world} processes: each needs a share of every "
                "micro-batch"
            )
        loss_module = CausalLMLoss(model, cfg.fused_ce)
        ids = [device.index] if device.type == "cuda" else None
        self.wrapped = (
            torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=ids) if self.ddp else loss_module
        )
        self.forward = torch.compile(self.wrapped) if cfg.torch_compile else self.wrapped
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device, self.amp_dtype, self.clip = device, amp_dtype, cfg.grad_clip

    def __call__(self, micro: list[torch.Tensor], opt, step_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ddp:  # every rank drew the same global batch; each keeps its own share of every micro-batch
            micro = [x[self.rank :: self.world] for x in micro]
        loss_sum = torch.zeros((), device=self.device)
        for i, x in enumerate(micro):
            x = x.to(self.device, non_blocking=True)
            # gradients are all-reduced once per step, on the last micro-batch only
            sync = self.wrapped.no_sync() if self.ddp and i < len(micro) - 1 else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    loss = self.forward(x)
                # Normalise by the tokens of the whole step, not per micro-batch: accumulation then
                # equals one large batch exactly; DDP averages over ranks, the world factor undoes it.
                (loss * self.world / step_tokens).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, grad_norm


class LearnerStep:
    """A learner's ``optimizer_step(model, batch, optimizer, max_norm) -> (loss, pre-clip norm)``
    (notebook 3) as the loop's step: one micro-batch, one process."""

    def __init__(self, step_fn: Callable, model: torch.nn.Module, cfg: LabConfig, device: torch.device, amp_dtype):
        if is_distributed() or cfg.grad_accum != 1 or cfg.torch_compile:
            raise ValueError(
                "a learner's optimizer step runs one micro-batch per step in one process: "
                "set grad_accum=1 and torch_compile=false, and run without torchrun"
            )
        self.step_fn, self.model, self.device, self.amp_dtype, self.clip = (
            step_fn,
            model,
            device,
            amp_dtype,
            cfg.grad_clip,
        )

    def __call__(self, micro: list[torch.Tensor], opt, step_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            loss, grad_norm = learner_step(self.step_fn, self.model, micro[0].to(self.device), opt, self.clip)
        return loss * step_tokens, grad_norm


def window_batches(
    stream: np.ndarray, cfg: LabConfig, device: torch.device
) -> Callable[[int, torch.Generator], list[torch.Tensor]]:
    """Each step's micro-batches of random windows; on a GPU the stream lives on the device, so a
    batch is one gather, not B host copies."""
    device_stream = torch.from_numpy(stream.astype(np.int64)).to(device) if device.type == "cuda" else None
    return lambda step, gen: [
        sample_windows(stream, cfg.block_size, cfg.batch_size, gen, device_stream) for _ in range(cfg.grad_accum)
    ]


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
    model.to(device)
    model.train()
    take_step = (
        LearnerStep(step_fn, model, cfg, device, amp_dtype) if step_fn else ReferenceStep(model, cfg, device, amp_dtype)
    )
    draw = batch_fn or window_batches(train_stream, cfg, device)
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult()
    start = (
        checkpointing.load(model, opt, gen, result) + 1 if checkpointing is not None and checkpointing.exists() else 1
    )
    t0 = time.perf_counter() - result.seconds
    # Speed, one flag: on a GPU the host reads losses every 10 steps (``_flush``), so it never waits
    # for the device; on a CPU (plain path) every step is read and logged as it ends.
    log_every = cfg.log_every or (10 if device.type == "cuda" else 1)
    pending: list[_Pending] = []
    bar = progress_bar(cfg.max_steps, desc, initial=start - 1) if progress else None
    with fast_paths(model, device, amp_dtype, evaluation=False):
        for step in range(start, cfg.max_steps + 1):
            lr = learning_rate(lr_fn, step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            micro = draw(step, gen)
            step_tokens = sum(x.shape[0] * (x.shape[1] - 1) for x in micro)
            loss_sum, grad_norm = take_step(micro, opt, step_tokens)
            result.tokens += step_tokens
            pending.append(_Pending(step, lr, step_tokens, result.tokens, loss_sum, grad_norm))
            # The host waits for the device only at log points: the loss and norm stay tensors until then.
            at_checkpoint = checkpointing is not None and step % checkpointing.every == 0
            if step % log_every == 0 or step == cfg.max_steps or at_checkpoint:
                _flush(pending, result, cfg)
            stop = bool(on_step(step, model)) if on_step is not None else False
            if at_checkpoint and step < cfg.max_steps and not stop:
                result.seconds = time.perf_counter() - t0
                checkpointing.save(step, model, opt, gen, result)
            if bar is not None:
                if not pending:
                    bar.set_postfix(loss=f"{result.log[-1]['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
            if stop:
                break
    _flush(pending, result, cfg)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
