"""The recipe's questions answered by measurement (notebook 3): why 5e-5 and not a pre-training
peak of 6e-4, why warm up, why cosine and not a flat rate. Each variant is a short CPT run from the base
model on the learner's blocks, with their loop, schedule and optimizer step, the same seed and budget,
scored on the headline's tokens with paired 95% intervals against the base model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cptlab.core.files import write_atomic
from cptlab.core.results import read_step
from cptlab.core.uncertainty import difference_interval
from cptlab.model.measure import StepSetup, baseline_of, config_of, general_stream, run_corpus, scored
from cptlab.model.schedule import lr_multiplier
from cptlab.model.train import Hooks, train
from cptlab.speed.device import seed_everything

# The pre-training peak of a model GPT-2 124M's size: GPT-3 Small's published rate and nanoGPT's
# default (the GPT-2 paper gives none).
GPT2_PEAK_LR = 6e-4
EXPERIMENTS_FILE = "experiments.json"


def _flat(lr_fn):
    """The learner's ``lr_at`` (or the recipe's) through the warm-up, then the peak to the end."""

    def flat(step, peak, warmup, max_steps):
        if step > warmup:
            return peak
        return lr_fn(step, peak, warmup, max_steps) if lr_fn else peak * lr_multiplier(step, warmup, max_steps)

    return flat


def recipe_experiments(
    run_dir: str | Path, lr_fn=None, step_fn=None, steps: int | None = None, progress: bool = False, loop_fn=None
) -> dict:
    """Five short runs: the recipe; at 6e-4; without warm-up, at both rates; warm-up then a flat rate.
    ``steps``: the budget (a third of the recipe's, at least 10)."""
    cfg = config_of(run_dir)
    s1 = read_step(run_dir, 1)
    budget = steps or max(10, cfg.max_steps // 3)
    warmup = min(cfg.warmup_steps, budget // 3)
    s = StepSetup(cfg, s1["base_model"])
    blocks, val = run_corpus(run_dir)
    english, _ = general_stream(cfg, s.tokenizer)
    baseline = baseline_of(s1)
    recipe, flat = lr_fn, _flat(lr_fn)  # None: the loop's own schedule, the recipe's
    variants = {
        "recipe": (cfg.cpt_lr, warmup, recipe),
        "lr 6e-4": (GPT2_PEAK_LR, warmup, recipe),
        "no warm-up": (cfg.cpt_lr, 0, recipe),
        "6e-4, no warm-up": (GPT2_PEAK_LR, 0, recipe),
        "flat rate": (cfg.cpt_lr, warmup, flat),
    }
    rows = []
    for name, (peak, w, schedule) in variants.items():
        seed_everything(cfg.seed)
        model = s.model()
        run_cfg = cfg.replace(max_steps=budget, warmup_steps=w, cpt_lr=peak, stop_at_floor=False)
        res = train(
            model,
            blocks,
            run_cfg,
            s.device,
            s.amp,
            progress=progress,
            desc=name,
            hooks=Hooks(loop_fn=loop_fn, lr_fn=schedule, step_fn=step_fn),
        )
        losses = [r["loss"] for r in res.log]
        rows.append(
            scored(
                model,
                name,
                val,
                english,
                cfg,
                s.device,
                s.tokenizer.eos_token_id,
                baseline,
                progress,
                peak_lr=peak,
                warmup_steps=w,
                steps=budget,
                losses=losses,
                lrs=[r["lr"] for r in res.log],
                final_loss=float(np.mean(losses[-5:])),
            )
        )
    # the base's per-document sums: two variants' gap is then paired over the same documents
    base_units = {"code": baseline.get("code_units"), "general": baseline.get("general_units")}
    out = {"budget": budget, "tokens_per_step": cfg.tokens_per_step, "variants": rows, "baseline_units": base_units}
    write_atomic(Path(run_dir) / EXPERIMENTS_FILE, json.dumps(out))
    return out


def paired_gaps(exp: dict, r: dict, ref: dict) -> dict | None:
    """``r`` minus ``ref``: the code drop's gap and the forgetting ratio's, each with its 95% interval,
    all three models' sums resampled over the same documents (two separate intervals that overlap
    can still hide a gap this evaluation sees). ``None`` without the base's per-document sums."""
    base = exp.get("baseline_units") or {}
    if not (base.get("code") and base.get("general")):
        return None
    if not all(v.get(f"{k}_units") for v in (r, ref) for k in ("code", "general")):
        return None
    return {
        "code_ppl_drop": difference_interval(base["code"], r["code_units"], ref["code_units"]),
        "forgetting_ratio": difference_interval(base["general"], ref["general_units"], r["general_units"]),
    }


def reading(exp: dict) -> list[str]:
    """What the numbers say, computed from them: each variant against the one it differs from by one
    choice, the paired gap's 95% interval for the code drop and the forgetting ratio, and whether it
    excludes zero (a gap this evaluation can see)."""
    v = {r["name"]: r for r in exp["variants"]}

    def apart(a, b, key):
        ia, ib = a.get(f"{key}_ci"), b.get(f"{key}_ci")
        return bool(ia and ib) and (ia["low"] > ib["high"] or ib["low"] > ia["high"])

    lines = []
    for name, against, what in (
        ("lr 6e-4", "recipe", "6e-4, a pre-training peak, against the recipe's 5e-5"),
        ("no warm-up", "recipe", "no warm-up, at 5e-5"),
        ("6e-4, no warm-up", "lr 6e-4", "no warm-up, at 6e-4"),
        ("flat rate", "recipe", "a flat rate after warm-up, against cosine"),
    ):
        r, ref = v.get(name), v.get(against)
        if r is None or ref is None:
            continue
        gaps = paired_gaps(exp, r, ref)
        if gaps is None:  # a file without per-document sums: only the separate intervals to go on
            gain = r["code_ppl_drop"] - ref["code_ppl_drop"]
            cost = r["forgetting_ratio"] - ref["forgetting_ratio"]
            seen = [
                k for k, key in (("gain", "code_ppl_drop"), ("forgetting", "forgetting_ratio")) if apart(r, ref, key)
            ]
            lines.append(
                f"{what}: code drop {gain * 100:+.1f} points, forgetting ratio {cost:+.3f}; "
                + (f"intervals apart for the {' and the '.join(seen)}" if seen else "within each other's intervals")
                + " (separate intervals, not a paired test)"
            )
            continue
        g, f = gaps["code_ppl_drop"], gaps["forgetting_ratio"]
        seen = [k for k, iv in (("gain", g), ("forgetting", f)) if iv["low"] > 0 or iv["high"] < 0]
        lines.append(
            f"{what}: code drop {g['estimate'] * 100:+.1f} points [{g['low'] * 100:+.1f}, {g['high'] * 100:+.1f}], "
            f"forgetting ratio {f['estimate']:+.3f} [{f['low']:+.3f}, {f['high']:+.3f}] (paired gaps); "
            + (
                f"a gap the intervals can see for the {' and the '.join(seen)}"
                if seen
                else "no gap the intervals can see"
            )
        )
    return lines


def experiments_table(exp: dict) -> str:
    def iv(v, key, fmt):
        ci = v.get(f"{key}_ci")
        return f"{fmt(v[key])} [{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else fmt(v[key])

    pct, ratio = (lambda x: f"{x:.1%}"), (lambda x: f"{x:.3f}")
    lines = [
        f"{exp['budget']} steps each, {exp['tokens_per_step']:,} tokens a step, same seed; paired 95% intervals",
        f"{'variant':<18}{'peak lr':>9}{'warm-up':>9}{'code ppl drop':>26}{'forgetting ratio':>28}{'final loss':>12}",
    ]
    for v in exp["variants"]:
        lines.append(
            f"{v['name']:<18}{v['peak_lr']:>9.0e}{v['warmup_steps']:>9}{iv(v, 'code_ppl_drop', pct):>26}"
            f"{iv(v, 'forgetting_ratio', ratio):>28}{v['final_loss']:>12.3f}"
        )
    return "\n".join(lines + [""] + reading(exp))
