"""The CPT loop (notebook 3's question 3.3), its reference, and the ``run`` it drives.

The loop is the learner's: steps, rates, the optimizer step, the log, the forgetting curve and the
stop at the retention floor. The ``run`` it is handed is the lab's: the model and optimizer, each
step's batch, the log, the curve's evaluation. Around those calls the lab keeps what a reader of
the loop need not see: checkpoints (saved when the loop asks for the next step's batch, so a
resumed run starts at ``run.first_step`` and ends bit-identical), precision and fast kernels.
``ProbeRun`` is a small ``run`` for the loop's check: it records every call the loop makes.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from cptlab.model.schedule import lr_multiplier

# torch's default generator and thread count belong to the process: grade-class judges learners in
# threads of one process, so a check that seeds a model or draws dropout masks holds this lock,
# or another learner's check beside it draws from the same generator and changes its reference.
TORCH_GLOBALS = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int):
    """torch's default generator seeded with ``seed`` for what runs inside (a model's initial
    weights), no other thread drawing from it meanwhile."""
    with TORCH_GLOBALS:
        torch.manual_seed(seed)
        yield


def cpt_loop(run, lr_at, optimizer_step) -> None:
    """The reference loop: steps ``run.first_step`` to ``max_steps`` (1-based); the curve every
    ``curve_every`` steps and at the last; with ``stop_at_floor``, stop once a point's forgetting
    ratio is above the retention floor (the point recorded first)."""
    cfg, opt = run.cfg, run.optimizer
    for step in range(run.first_step, cfg.max_steps + 1):
        rate = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
        for group in opt.param_groups:
            group["lr"] = rate
        loss, grad_norm = optimizer_step(run.model, run.batch(step), opt, cfg.grad_clip)
        run.log(step, rate, loss, grad_norm)
        if step % cfg.curve_every and step != cfg.max_steps:
            continue
        run.model.eval()
        with torch.no_grad():
            point = run.evaluate(step)
        run.model.train()
        run.curve.append(point)  # recorded first: the point that stops the run is on the curve
        if cfg.stop_at_floor and point["forgetting_ratio"] > cfg.retention_floor:
            return


# ----------------------------------------------------------------------------- the loop's check
@dataclass
class ProbeConfig:
    """The fields of ``LabConfig`` a loop reads, for a probe run."""

    max_steps: int = 7
    warmup_steps: int = 2
    cpt_lr: float = 0.05
    grad_clip: float = 1.0
    curve_every: int = 3
    stop_at_floor: bool = False
    retention_floor: float = 1.05


def small_gpt2(seed: int, vocab: int = 97, n_positions: int = 64, dropout: float = 0.0):
    """A seeded 2-layer, 32-wide GPT-2: the model the checks of learner code run on."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        loss_type="ForCausalLM",
    )
    with seeded(seed):
        model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # transformers reads it from the model, not the config; unset, it warns
    return model


@contextlib.contextmanager
def _same_in_every_process(seed: int):
    """One thread and dropout masks from ``seed``: the step's numbers are then the same in the
    learner's process and the grader's, whatever their thread counts, load, earlier draws or other
    learners' checks in the grader's other threads (``TORCH_GLOBALS``)."""
    with TORCH_GLOBALS:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
        finally:
            torch.set_num_threads(threads)


@dataclass(eq=False)  # a run is itself, not its settings: the call server finds it by identity
class ProbeRun:
    """A ``run`` that records what a loop does with it: each batch asked for, each optimizer step
    (which batch, the rate of every parameter group, train or eval mode, gradients on or off),
    each log row, each evaluation and the curve as the loop left it. ``ratios`` are the forgetting
    ratios its evaluations report, by step. ``lr_at`` and ``optimizer_step`` are the references."""

    seed: int
    config: dict
    ratios: dict = field(default_factory=dict)
    first_step: int = 1
    start_lr: float = 0.0123  # what every group holds before the loop sets a rate
    received: dict | None = None  # the trace of the same probe run in a learner's process (grading)

    def __post_init__(self):
        self.cfg = ProbeConfig(**self.config)
        self.ratios = {int(k): float(v) for k, v in self.ratios.items()}
        self.model = small_gpt2(self.seed, vocab=61, n_positions=16, dropout=0.1).train()  # train and eval differ
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.dim() < 2]
        # plain SGD, two groups as the lab's AdamW has: an update in proportion to the gradient, so a
        # last-bit difference between two processes' kernels stays a last-bit difference in the losses
        # (Adam's first steps are lr x sign(g): a gradient that cancels to ~1e-9 flips sign and the
        # losses part by 1e-3)
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=self.start_lr
        )
        self.gen = torch.Generator().manual_seed(self.seed + 1)
        self.curve: list = []
        self.batches: list[tuple[int, torch.Tensor]] = []
        self.events: list[dict] = []

    @property
    def trace(self) -> dict:
        """Plain data: what the loop did, in order, and the curve's steps as it left them."""
        if self.received is not None:
            return self.received
        curve = [p.get("step") if isinstance(p, dict) else None for p in self.curve]
        return {"events": self.events, "curve": curve}

    def batch(self, step: int) -> torch.Tensor:
        x = torch.randint(0, 61, (2, 12), generator=self.gen)
        self.batches.append((int(step), x))
        self.events.append({"op": "batch", "step": int(step)})
        return x

    def lr_at(self, step, peak_lr, warmup_steps, max_steps) -> float:
        return peak_lr * lr_multiplier(step, warmup_steps, max_steps)

    def optimizer_step(self, model, batch, optimizer, max_norm):
        which = next((s for s, x in self.batches if x is batch), None)
        event = {
            "op": "step",
            "batch": which,
            "lrs": [float(g["lr"]) for g in optimizer.param_groups],
            "training": bool(model.training),
            "grad": torch.is_grad_enabled(),
            "max_norm": _plain(max_norm),
        }
        self.events.append(event)
        with _same_in_every_process(self.seed * 100_003 + sum(e["op"] == "step" for e in self.events)):
            loss = model(batch, labels=batch).loss
            event["loss"] = float(loss.item())
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach(), norm

    def log(self, step, lr, loss, grad_norm) -> None:
        self.events.append({"op": "log", "step": _plain(step), "lr": _plain(lr), "loss": _plain(loss)})

    def evaluate(self, step: int) -> dict:
        self.events.append(
            {
                "op": "evaluate",
                "step": _plain(step),
                "training": bool(self.model.training),
                "grad": torch.is_grad_enabled(),
            }
        )
        return {"step": _plain(step), "forgetting_ratio": self.ratios.get(int(step), 1.0)}


def _plain(x: Any) -> Any:
    try:
        v = float(torch.as_tensor(x).detach().float().reshape(()).item())
    except (TypeError, ValueError, RuntimeError):
        return repr(x)[:40]
    return int(v) if v.is_integer() and isinstance(x, int) else v
