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
from cptlab.model.loop import cpt_loop
from cptlab.model.schedule import lr_multiplier
from cptlab.speed.device import autocast
from cptlab.speed.fastpath import fast_paths
from cptlab.speed.fused import CausalLMLoss


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""


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
        _restore(self.extra, meta["extra"])
        return int(meta["step"])


def _restore(into: dict, saved: dict) -> None:
    """``saved`` into ``into`` in place, nested dicts and lists kept as the same objects: the loop
    holds the curve's list itself (``run.curve``)."""
    for key in list(into):
        if key not in saved:
            del into[key]
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _restore(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key][:] = value
        else:
            into[key] = value


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
    loss: torch.Tensor  # this process's share of the step's mean loss
    grad_norm: torch.Tensor


def _flush(pending: list[_Pending], result: "TrainResult", cfg: LabConfig) -> None:
    """Bring the pending steps' losses and norms to the host in one sync and append their log rows;
    stop the run at the first non-finite loss."""
    if not pending:
        return
    values = torch.stack([torch.stack([p.loss.float(), p.grad_norm.float()]) for p in pending])
    values[:, 0] = all_reduce_sum(values[:, 0].contiguous())
    for p, (loss, grad_norm) in zip(pending, values.tolist()):
        if not math.isfinite(loss):
            pending.clear()
            raise TrainingDivergedError(
                f"loss became {loss} at step {p.step} (lr {p.lr:.3g}): the run was stopped. "
                f"Lower the learning rate (cpt_lr={cfg.cpt_lr}) or check the data for broken documents."
            )
        result.log.append(asdict(LogRow(p.step, loss, p.lr, grad_norm, p.tokens, p.step_tokens)))
    pending.clear()


def _as_scalar(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().float().reshape(())


@dataclass
class TrainResult:
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def _tokens(batch) -> int:
    return sum(x.shape[0] * (x.shape[1] - 1) for x in (batch if isinstance(batch, list) else [batch]))


class ReferenceStep:
    """cptlab's optimizer step: micro-batches through the loss module (so DDP and torch.compile see
    model and loss whole), gradients normalised by the tokens of the whole step, clip, AdamW.
    Called as the loop calls an optimizer step; returns this process's share of the mean loss."""

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
        self.device, self.amp_dtype = device, amp_dtype

    def __call__(self, model, batch, opt, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        micro = batch if isinstance(batch, list) else [batch]
        step_tokens = _tokens(micro)
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum / step_tokens, grad_norm


class LearnerStep:
    """A learner's ``optimizer_step(model, batch, optimizer, max_norm) -> (loss, pre-clip norm)``
    (notebook 3) under the run's precision: one micro-batch, one process."""

    def __init__(self, step_fn: Callable, cfg: LabConfig, device: torch.device, amp_dtype):
        if is_distributed() or cfg.grad_accum != 1 or cfg.torch_compile:
            raise ValueError(
                "a learner's optimizer step runs one micro-batch per step in one process: "
                "set grad_accum=1 and torch_compile=false, and run without torchrun"
            )
        self.step_fn, self.device, self.amp_dtype = step_fn, device, amp_dtype
        self.__name__ = getattr(step_fn, "__name__", "optimizer_step")

    def __call__(self, model, batch, opt, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            out = self.step_fn(model, batch, opt, max_norm)
        try:
            loss, norm = out
            return _as_scalar(loss), _as_scalar(norm)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{self.__name__} returned {type(out).__name__}; it should return (loss, pre-clip gradient norm): "
                "run its check cell"
            ) from None


class Schedule:
    """The learner's ``lr_at`` (or the recipe's), its every answer checked to be a usable rate."""

    def __init__(self, lr_fn: Callable | None, min_lr_ratio: float = 0.0):
        self.lr_fn, self.min_lr_ratio = lr_fn, min_lr_ratio
        self.__name__ = getattr(lr_fn, "__name__", "lr_fn") if lr_fn else "cptlab.model.schedule.lr_multiplier"

    def __call__(self, step: int, peak_lr: float, warmup_steps: int, max_steps: int) -> float:
        if self.lr_fn is None:
            return peak_lr * lr_multiplier(step, warmup_steps, max_steps, self.min_lr_ratio)
        lr = self.lr_fn(step, peak_lr, warmup_steps, max_steps)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(
                f"{self.__name__}({step}, ...) returned {lr!r}: a learning rate is a finite number >= 0; run its "
                "check cell"
            )
        return float(lr)


def window_batches(
    stream: np.ndarray, cfg: LabConfig, device: torch.device
) -> Callable[[int, torch.Generator], list[torch.Tensor]]:
    """Each step's micro-batches of random windows; on a GPU the stream lives on the device, so a
    batch is one gather, not B host copies."""
    device_stream = torch.from_numpy(stream.astype(np.int64)).to(device) if device.type == "cuda" else None
    return lambda step, gen: [
        sample_windows(stream, cfg.block_size, cfg.batch_size, gen, device_stream) for _ in range(cfg.grad_accum)
    ]


class Run:
    """What the loop is handed (``run``): ``cfg``, ``model``, ``optimizer``, ``first_step``,
    ``curve``; ``batch(step)``, ``log(step, lr, loss, grad_norm)`` and ``evaluate(step)``.

    Around those calls it keeps the rest: the log's host reads batched (``_flush``), the progress
    bar, the ``on_step`` hook, and the checkpoint, saved when the loop asks for the batch after a
    checkpoint step (the step's curve point is in by then)."""

    def __init__(self, model, cfg, device, draw, checkpointing, evaluate, curve, on_step, progress, desc):
        self.cfg, self.model, self.device = cfg, model, device
        self.optimizer = make_optimizer(model, cfg, device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.result = TrainResult()
        self.curve = curve if curve is not None else []
        self._draw, self._ckpt, self._evaluate, self._on_step = draw, checkpointing, evaluate, on_step
        resumed = checkpointing is not None and checkpointing.exists()
        self.first_step = checkpointing.load(model, self.optimizer, self.gen, self.result) + 1 if resumed else 1
        self._t0 = time.perf_counter() - self.result.seconds
        # Speed, one flag: on a GPU the host reads losses every 10 steps (``_flush``), so it never waits
        # for the device; on a CPU (plain path) every step is read and logged as it ends.
        self._log_every = cfg.log_every or (10 if device.type == "cuda" else 1)
        self._pending: list[_Pending] = []
        self._step_tokens = 0
        self._bar = (
            progress_bar(cfg.max_steps, desc, initial=self.first_step - 1, unit="step", announce=True)
            if progress
            else None
        )

    def batch(self, step: int):
        """The step's batch of windows from the run's blocks: ``[batch_size, block_size]`` token ids on the
        device (a list of micro-batches when the lab's own step accumulates gradients)."""
        done = int(step) - 1
        if self._ckpt is not None and done >= self.first_step and done % self._ckpt.every == 0:
            self._flush()
            self.result.seconds = time.perf_counter() - self._t0
            self._ckpt.save(done, self.model, self.optimizer, self.gen, self.result)
        micro = self._draw(int(step), self.gen)
        self._step_tokens = _tokens(micro)
        return micro[0].to(self.device) if len(micro) == 1 else micro

    def log(self, step: int, lr: float, loss, grad_norm) -> None:
        """One log row: the step's loss and pre-clip gradient norm (tensors are read at log points only)."""
        try:
            loss, grad_norm = _as_scalar(loss), _as_scalar(grad_norm)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"run.log(step, lr, loss, grad_norm) got loss={loss!r:.40}, grad_norm={grad_norm!r:.40}: pass the two "
                "numbers your optimizer_step returned"
            ) from None
        self.result.tokens += self._step_tokens
        self._pending.append(_Pending(int(step), float(lr), self._step_tokens, self.result.tokens, loss, grad_norm))
        if int(step) % self._log_every == 0 or int(step) == self.cfg.max_steps:
            self._flush()
        if self._on_step is not None:
            self._on_step(int(step), self.model)
        if self._bar is not None:
            if not self._pending:
                tok_s = self.result.tokens / max(1e-9, time.perf_counter() - self._t0)
                self._bar.set_postfix(
                    loss=f"{self.result.log[-1]['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False
                )
            self._bar.update(1)

    def evaluate(self, step: int) -> dict:
        """The curve's point at ``step``: both perplexities and the forgetting ratio (a dict; its
        ``forgetting_ratio`` is what the floor is about). Runs without a curve return a ratio of nan."""
        if self._evaluate is None:
            return {"step": int(step), "forgetting_ratio": float("nan")}
        return self._evaluate(self.model, int(step))

    def _flush(self) -> None:
        _flush(self._pending, self.result, self.cfg)

    def finish(self) -> TrainResult:
        self._flush()
        if self._bar is not None:
            self._bar.close()
        self.result.seconds = time.perf_counter() - self._t0
        return self.result


@dataclass
class Hooks:
    """What a run may swap in around the lab's loop, all optional.

    ``loop_fn(run, lr_at, optimizer_step)`` is the loop (the learner's, notebook 3; else
    ``cptlab.model.loop.cpt_loop``); ``lr_fn`` and ``step_fn`` are the schedule and optimizer step it
    is handed (the learner's, else the recipe's and the lab's fast one). ``evaluate(model, step)``
    gives the forgetting curve's points, appended to ``curve``. ``batch_fn(step, generator)`` may
    supply each step's micro-batches (replay mixing does); ``on_step(step, model)`` runs after each
    step's log row; ``checkpointing`` saves and resumes the run.
    """

    loop_fn: Callable | None = None
    lr_fn: Callable[[int, float, int, int], float] | None = None
    step_fn: Callable | None = None
    batch_fn: Callable[[int, torch.Generator], list[torch.Tensor]] | None = None
    evaluate: Callable[[torch.nn.Module, int], dict] | None = None
    curve: list | None = None
    on_step: Callable[[int, torch.nn.Module], None] | None = None
    checkpointing: Checkpointing | None = None


def train(
    model: torch.nn.Module,
    train_stream: np.ndarray,
    cfg: LabConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "CPT",
    hooks: Hooks | None = None,
) -> TrainResult:
    """Continue pre-training ``model`` on random windows of ``train_stream`` (a 1-D stream, or
    step 2's ``[n_blocks, block_size]`` blocks); ``hooks``: what the run swaps in (``Hooks``)."""
    h = hooks or Hooks()
    model.to(device)
    model.train()
    step = LearnerStep(h.step_fn, cfg, device, amp_dtype) if h.step_fn else ReferenceStep(model, cfg, device, amp_dtype)
    schedule = Schedule(h.lr_fn, cfg.min_lr_ratio)
    draw = h.batch_fn or window_batches(train_stream, cfg, device)
    run = Run(model, cfg, device, draw, h.checkpointing, h.evaluate, h.curve, h.on_step, progress, desc)
    with fast_paths(model, device, amp_dtype, evaluation=False):
        (h.loop_fn or cpt_loop)(run, schedule, step)
    result = run.finish()
    model.eval()
    return result
