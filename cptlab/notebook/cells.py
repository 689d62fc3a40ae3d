"""What the step notebooks' cells call: the lab's steps, tables and plots, run on the learner's
functions. A step whose learner function is still a stub, or whose earlier step has not run yet,
says what to do and returns None instead of raising, so a learner's notebook runs to its end and
every check cell reports its points."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
from huggingface_hub.utils import disable_progress_bars
from transformers.utils import logging as hf_logging

from cptlab.core.config import get_config
from cptlab.core.results import MissingStepError, read_step
from cptlab.core.uncertainty import describe
from cptlab.lab import plots, steps
from cptlab.lab.ddp import ddp_table
from cptlab.lab.ddp import two_processes as _two_processes
from cptlab.lab.experiments import experiments_table
from cptlab.lab.experiments import recipe_experiments as _recipe_experiments
from cptlab.lab.preset import resolve_preset
from cptlab.lab.speed import compare_precisions, speed_table
from cptlab.lab.speed import speed_of_run as _speed_of_run
from cptlab.lab.study import run_study, study_table
from cptlab.notebook.fallback import use
from cptlab.notebook.long_runs import SKIPPED, skipped

# A notebook shows the lab's own output: no loading bars or deprecation notices from the libraries.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
disable_progress_bars()
for module in ("transformers", "peft", "torch", "huggingface_hub", "datasets"):
    warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def _say(text: str) -> None:
    print(f"[not run yet] {text}")


def _guarded(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:
            what = str(exc).split(":")[0] or "a function above"
            _say(f"{what} is not written yet. Write it, run its check cell, then run this cell again.")
        except MissingStepError as exc:
            _say(f"{exc}")
        return None

    return run


@_guarded
def measure_baseline(cfg, run_dir, perplexity_fn) -> dict:
    s1 = steps.run_step1(cfg, run_dir, perplexity_fn=use(perplexity_fn, "corpus_perplexity"))
    print(steps.step_table(s1, ["base_model", "model_params", "baseline_code_ppl", "baseline_general_ppl"]))
    print(
        f"scored tokens: code {s1['code']['tokens']:,}, English {s1['general']['tokens']:,}; "
        f"code / English perplexity = {s1['baseline_code_ppl'] / s1['baseline_general_ppl']:.2f}"
    )
    for name, label in (("code", "code"), ("general", "English")):
        iv = s1[name].get("interval")
        if iv:
            print(
                f"{label} perplexity {s1[name]['ppl']:.1f}, 95% interval {iv['low']:.1f} to {iv['high']:.1f} "
                f"({iv['method']}: {iv['n_units']} units)"
            )
    print("protocol:", s1["code"]["protocol"])
    return s1


@_guarded
def make_corpus(run_dir, split_fn, blocks_fn) -> dict:
    s2 = steps.run_step2(run_dir, split_fn=use(split_fn, "split_documents"), blocks_fn=use(blocks_fn, "to_blocks"))
    print(
        steps.step_table(
            s2,
            [
                "n_docs",
                "n_tokens",
                "eos_count",
                "train_docs",
                "val_docs",
                "train_tokens",
                "val_tokens",
                "val_fraction",
                "block_size",
                "n_blocks",
            ],
        )
    )
    return s2


@_guarded
def show_eos_window(run_dir) -> dict:
    w = steps.eos_window(run_dir)
    print(f"EOS at positions {w['eos_positions']} of a {w.get('block_size')}-token window\n")
    print(
        w["text"].replace(
            w.get("eos_token", "<|endoftext|>"), "\n\u2588\u2588\u2588 <|endoftext|> \u2588\u2588\u2588\n"
        )
    )
    return w


@_guarded
def run_cpt(run_dir, lr_fn, step_fn, loop_fn) -> dict:
    s3 = steps.run_step3(
        run_dir,
        lr_fn=use(lr_fn, "lr_at"),
        step_fn=use(step_fn, "optimizer_step"),
        loop_fn=use(loop_fn, "cpt_loop"),
    )
    norms = [r["grad_norm"] for r in s3["log"]]
    clipped = sum(n > s3["hparams"]["grad_clip"] for n in norms)
    print(
        f"{len(s3['log'])} steps, {s3['tokens_seen']:,} tokens in {s3['seconds']:.1f} s "
        f"({s3['tokens_per_second']:,.0f} tokens/s); adapted model in {s3['adapted_model']}"
    )
    print(
        f"loss {s3['log'][0]['loss']:.3f} -> {s3['log'][-1]['loss']:.3f}; pre-clip gradient norm "
        f"{min(norms):.2f} to {max(norms):.2f}: {clipped} of {len(norms)} steps clipped at {s3['hparams']['grad_clip']}"
    )
    print(loss_reading(s3))
    return s3


def loss_reading(s3: dict) -> str:
    """What the step 3 loss plot shows, in numbers: the smoothed loss at the end of warm-up and of
    the run, where it fell fastest, and how large one step's noise is against the trend."""
    loss = [r["loss"] for r in s3["log"]]
    smooth = plots.ema(loss)
    warm = min(s3["hparams"]["warmup_steps"], len(loss)) or 1
    k = min(10, len(smooth) - 1)  # the steepest stretch of (at most) 10 steps; a short run has fewer
    fall, start = max((smooth[i] - smooth[i + k], i + 1) for i in range(len(smooth) - k)) if k else (0.0, 1)
    noise = float((np.asarray(loss) - smooth).std())
    return (
        f"smoothed loss {smooth[0]:.3f} at step 1, {smooth[warm - 1]:.3f} at the end of warm-up (step {warm}), "
        f"{smooth[-1]:.3f} at step {len(loss)}; it fell fastest over steps {start}-{start + k} ({fall:.3f} nats); "
        f"one step's loss scatters by +-{noise:.2f} nats around the trend (a batch is {s3['hparams']['batch_size']} "
        "windows)"
    )


@_guarded
def measure_tradeoff(run_dir, drop_fn, ratio_fn) -> dict:
    s4 = steps.run_step4(run_dir, drop_fn=use(drop_fn, "code_ppl_drop"), ratio_fn=use(ratio_fn, "forgetting_ratio"))
    print(
        steps.step_table(
            s4,
            [
                "baseline_code_ppl",
                "adapted_code_ppl",
                "code_ppl_drop",
                "baseline_general_ppl",
                "adapted_general_ppl",
                "forgetting_ratio",
            ],
        )
    )
    d, r = s4["code_ppl_drop_ci"], s4["forgetting_ratio_ci"]
    print(
        f"code perplexity drop {describe(d, percent=True)}, forgetting ratio {describe(r)} "
        f"(paired 95% intervals, {d['method']}: {d['n_units']} code and {r['n_units']} English units)"
    )
    return s4


@_guarded
def show_floor(run_dir) -> dict:
    s3 = read_step(run_dir, 3)
    floor, curve = s3["floor"], s3["curve"]
    last = curve[-1]
    print(
        f"retention floor {floor['retention_floor']}; the curve's last point (step {last['step']}) is the headline: "
        f"code drop {100 * last['code_ppl_drop']:.1f}%, forgetting ratio {last['forgetting_ratio']:.3f}"
    )
    if floor["first_step_above"] is None:
        print("the forgetting ratio stayed under the floor at every point of the curve")
    else:
        above = next(p for p in curve if p["step"] == floor["first_step_above"])
        ci = above.get("forgetting_ratio_ci")
        print(
            f"first point above the floor: step {above['step']}, forgetting ratio {above['forgetting_ratio']:.4f}"
            + (f" (95% interval {ci['low']:.3f} to {ci['high']:.3f})" if ci else "")
            + f", code drop {100 * above['code_ppl_drop']:.1f}%"
        )
    if floor["best_step_under_floor"] is not None:
        print(
            f"best point under the floor: step {floor['best_step_under_floor']}, code drop "
            f"{100 * floor['best_code_ppl_drop_under_floor']:.1f}%"
        )
    return floor


@_guarded
def compare_variants(run_dir, choose_fn, schedule_fn=None, interpolate_fn=None, lora_fn=None) -> dict:
    """The study, built from the learner's replay schedule, interpolation and LoRA set-up, and decided by
    their rule (each replaced by the reference, said in one line, while it fails its check)."""
    study = run_study(
        run_dir,
        choose_fn=use(choose_fn, "choose_variant"),
        schedule_fn=use(schedule_fn, "replay_schedule"),
        interpolate_fn=use(interpolate_fn, "interpolate"),
        lora_fn=use(lora_fn, "lora_config"),
    )
    print(study_table(study))
    return study


LORA_SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "lora_sweep_tiny.json"


def lora_sweep(path=LORA_SWEEP, run_dir=None) -> dict | None:
    """The LoRA sweep's table and plot (``benchmarks/lora_sweep.py``), as measured on its preset."""
    import json

    path = Path(path)
    if not path.is_file():
        _say(
            f"{path} is not there: run `python benchmarks/lora_sweep.py --run RUN_DIR --out {path}` (about 4 minutes "
            "on tiny)"
        )
        return None
    sweep = json.loads(path.read_text())
    print(f"{'configuration':<32}{'trainable':>11}  {'code drop [95% CI]':<22}{'forgetting [95% CI]':<22}")
    for r in sweep["rows"]:
        print(
            f"{r['name']:<32}{r['trainable_params']:>11,}  {describe(r['code_ppl_drop_ci'], percent=True):<22}"
            f"{describe(r['forgetting_ratio_ci']):<22}"
        )
    plots.lora_sweep_plot(sweep, run_dir)
    return sweep


baseline_bars = _guarded(plots.baseline_bars)
corpus_figures = _guarded(plots.corpus_figures)
loss_curve = _guarded(plots.loss_curve)
before_after = _guarded(plots.before_after)
forgetting_curve = _guarded(plots.forgetting_curve)
tradeoff_plot = _guarded(plots.tradeoff_plot)


@_guarded
def recipe_experiments(run_dir, lr_fn, step_fn, loop_fn, go_further: bool = True) -> dict | None:
    """The recipe's questions as short runs with the learner's loop, schedule and optimizer step."""
    if skipped(go_further, run_dir, "recipe_experiments", "the recipe's five short runs"):
        return None
    exp = _recipe_experiments(
        run_dir,
        lr_fn=use(lr_fn, "lr_at"),
        step_fn=use(step_fn, "optimizer_step"),
        loop_fn=use(loop_fn, "cpt_loop"),
        progress=True,  # each short run shows its bar, and its progress lines in a terminal
    )
    print(experiments_table(exp))
    return exp


@_guarded
def experiments_plot(run_dir, go_further: bool = True):
    """The experiments' plot, once they have run."""
    if not go_further:
        print(f"{SKIPPED}: the experiments' plot follows the recipe's runs above")
        return None
    return plots.experiments_plot(run_dir)


@_guarded
def two_processes(run_dir, steps: int = 4, go_further: bool = True) -> dict | None:
    """The lab's loop in one process, then in two under torchrun (DDP), from the base model."""
    if skipped(go_further, run_dir, "two_processes", "one process against two under torchrun"):
        return None
    result = _two_processes(run_dir, steps)
    print(ddp_table(result))
    return result


@_guarded
def speed_of_run(run_dir, flops_fn, mfu_fn, go_further: bool = True) -> dict | None:
    """Step 3's MFU from the learner's ``flops_per_token`` and ``mfu``, and bf16 against fp32 on this device."""
    if skipped(go_further, run_dir, "speed_of_run", "your run's MFU and bf16 against fp32"):
        return None
    speed = _speed_of_run(run_dir, flops_fn=use(flops_fn, "flops_per_token"), mfu_fn=use(mfu_fn, "mfu"))
    precisions = compare_precisions(run_dir)
    print(speed_table(speed, precisions))
    return {**speed, "precisions": precisions}


def lab_config(preset: str, run_dir: str, seed: int, overrides: dict):
    """The run's config from the parameters cell, ``auto`` resolved, said in one line."""
    name, why = resolve_preset(preset)
    cfg = get_config(name, seed=seed, **overrides)
    print(f"preset {cfg.preset} ({why})")
    print(f"block_size {cfg.block_size}, CPT lr {cfg.cpt_lr}, {cfg.max_steps} steps, run folder {run_dir}")
    return cfg


def run_folder(path: str) -> str:
    return str(Path(path).resolve())
