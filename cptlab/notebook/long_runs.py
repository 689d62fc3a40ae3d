"""Go further's long runs wait for the learner: with ``GO_FURTHER = False`` (the parameters cell's
default) each run cell prints one line, what it would cost at this run's own training speed, instead of
training or evaluating; the graders' and ``make lab``'s full track inject ``GO_FURTHER = True``."""

from __future__ import annotations

from pathlib import Path

from cptlab.core.results import MissingStepError, read_step
from cptlab.model.measure import config_of

SWITCH = "GO_FURTHER"
SKIPPED = "Go further: skipped"
# What each run trains and evaluates, in the lab's own terms (cptlab.lab.experiments, ddp, speed).
RECIPE_RUNS = 5
DDP_STEPS = 4
PRECISION_STEPS = 7  # compare_precisions: one warm-up step and six timed, at each of two precisions
PRECISION_EVAL_TOKENS = 8192
FP32_SLOWDOWN = 2.0  # the two-process and precision runs compute (partly) in fp32: at most ~2x slower
TORCHRUN_START_S = 20.0  # two interpreters importing torch and transformers, then the gloo rendezvous
EVAL_SPEEDUP = 3.0  # a forward pass is a third of a training step's FLOPs


def _seconds(run_dir: str | Path, what: str) -> float | None:
    """Seconds ``what`` would take here, from step 3's measured tokens per second (``None`` before step 3)."""
    try:
        s1, s3 = read_step(run_dir, 1), read_step(run_dir, 3)
        cfg = config_of(run_dir)
    except (MissingStepError, ValueError, OSError):
        return None
    tps = float(s3.get("tokens_per_second") or 0)
    if tps <= 0:
        return None
    step_s = cfg.tokens_per_step / tps
    measured = [p for p in s3.get("curve", []) if p.get("step", 0) > 0]
    eval_s = (s3.get("curve_eval_seconds") or 0) / len(measured) if measured else 0.0
    if eval_s <= 0:  # no curve point measured: both evaluation sets at three times the training speed
        eval_s = (s1["code"]["tokens"] + s1["general"]["tokens"]) / (EVAL_SPEEDUP * tps)
    if what == "recipe_experiments":
        return RECIPE_RUNS * (max(10, cfg.max_steps // 3) * step_s + eval_s)
    if what == "two_processes":
        return 2 * DDP_STEPS * step_s * FP32_SLOWDOWN + TORCHRUN_START_S
    if what == "speed_of_run":
        evals = PRECISION_EVAL_TOKENS / (EVAL_SPEEDUP * tps)
        return 2 * (PRECISION_STEPS * step_s + evals) * (1 + FP32_SLOWDOWN) / 2
    return None


def cost(run_dir: str | Path, what: str) -> str:
    """``about 2.5 minutes on this preset``, ``under a minute ...``, or what the estimate needs."""
    secs = _seconds(run_dir, what)
    if secs is None:
        return "its time is estimated from step 3's training speed once step 3 has run"
    if secs < 60:
        return "under a minute on this preset, at this run's training speed"
    return f"about {round(secs / 30) / 2:g} minutes on this preset, at this run's training speed"


def skipped(go_further: bool, run_dir: str | Path, what: str, name: str) -> bool:
    """Whether ``name`` waits for the switch; if so, its one line."""
    if go_further:
        return False
    print(f"{SKIPPED}: {name}; set {SWITCH} = True in the parameters cell to run it ({cost(run_dir, what)})")
    return True
