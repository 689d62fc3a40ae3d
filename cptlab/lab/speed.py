"""The speed of a learner's own CPT run (notebook 3): tokens per second as step 3 measured them,
model FLOPs per token from the learner's ``flops_per_token``, the device's peak, and the MFU they
give; and what bf16 autocast buys against fp32 on this device, in speed and in perplexity."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from cptlab.core.results import read_step
from cptlab.model.measure import StepSetup, config_of, model_path, run_corpus
from cptlab.model.perplexity import perplexity
from cptlab.model.train import train
from cptlab.speed.device import cpu_has_native_bf16
from cptlab.speed.flops import device_peaks, flops_per_token, model_flops_utilization, precision_name


def speed_of_run(run_dir: str | Path, flops_fn=None, mfu_fn=None) -> dict:
    """MFU of step 3's run: its tokens per second (evaluation of the curve excluded) x the FLOPs of
    a training token (``flops_fn(model, block_size)``) over the peak of the run's precision
    (``mfu_fn(tokens_per_second, flops_per_token, peaks, precision)``); the learner's, else the references."""
    cfg = config_of(run_dir)
    s3 = read_step(run_dir, 3)
    s = StepSetup(cfg, read_step(run_dir, 1)["base_model"])
    model = s.model(str(model_path(run_dir, s3["adapted_model"])))
    fpt = float((flops_fn or flops_per_token)(model, cfg.block_size))
    peaks = device_peaks(s.device)
    precision = precision_name(s.amp)
    peak, source = peaks[precision]
    tps = float(s3["tokens_per_second"])
    mfu = float((mfu_fn or model_flops_utilization)(tps, fpt, {k: v[0] for k, v in peaks.items()}, precision))
    return {
        "device": s.device.type,
        "precision": precision,
        "tokens_per_second": tps,
        "flops_per_token": fpt,
        "achieved_flops": tps * fpt,
        "peak_flops": peak,
        "peak_source": source,
        "mfu": mfu,
    }


def _train_rate(model, blocks, cfg, device, amp, steps: int) -> float:
    """Tokens per second of ``steps`` optimizer steps after one warm-up step (the library's loop)."""
    short = cfg.replace(max_steps=steps + 1, warmup_steps=1, log_every=steps + 1)
    train(copy.deepcopy(model), blocks, short.replace(max_steps=1), device, amp, progress=False)
    t0 = time.perf_counter()
    res = train(copy.deepcopy(model), blocks, short, device, amp, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return res.tokens / (time.perf_counter() - t0)


def compare_precisions(run_dir: str | Path, steps: int = 6, eval_tokens: int = 8192) -> dict:
    """bf16 autocast against fp32 on this device: training tokens per second over a few steps of
    the adapted model, and the adapted model's validation perplexity (and its speed) at each."""
    cfg = config_of(run_dir)
    s3 = read_step(run_dir, 3)
    s = StepSetup(cfg, read_step(run_dir, 1)["base_model"])
    model = s.model(str(model_path(run_dir, s3["adapted_model"])))
    blocks, val = run_corpus(run_dir)
    rows = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        t0 = time.perf_counter()
        res = perplexity(
            model,
            val,
            cfg.block_size,
            batch_size=cfg.eval_batch_size,
            max_tokens=eval_tokens,
            device=s.device,
            amp_dtype=amp,
        )
        rows[name] = {
            "train_tokens_per_second": _train_rate(model, blocks, cfg, s.device, amp, steps),
            "eval_tokens_per_second": res.tokens / (time.perf_counter() - t0),
            "val_ppl": res.ppl,
            "val_tokens": res.tokens,
        }
    native = s.device.type == "cuda" or cpu_has_native_bf16()
    return {
        "device": s.device.type,
        "native_bf16": native,
        "steps": steps,
        "rows": rows,
        "train_speedup": rows["bf16"]["train_tokens_per_second"] / rows["fp32"]["train_tokens_per_second"],
        "ppl_difference": rows["bf16"]["val_ppl"] / rows["fp32"]["val_ppl"] - 1,
    }


def speed_table(speed: dict, precisions: dict | None = None) -> str:
    lines = [
        f"{'your run (step 3)':<34}{speed['tokens_per_second']:>12,.0f} tokens/s "
        f"({speed['device']}, {speed['precision']})",
        f"{'FLOPs per training token (yours)':<34}{speed['flops_per_token']:>12.4g}",
        f"{'achieved':<34}{speed['achieved_flops'] / 1e9:>12,.1f} GFLOP/s",
        f"{'peak':<34}{speed['peak_flops'] / 1e9:>12,.1f} GFLOP/s ({speed['peak_source']})",
        f"{'model FLOPs utilisation (MFU)':<34}{speed['mfu']:>12.1%}",
    ]
    if precisions:
        r = precisions["rows"]
        lines += [
            "",
            f"{'':<10}{'train tokens/s':>16}{'eval tokens/s':>16}{'val ppl':>12}",
            *(
                f"{name:<10}{r[name]['train_tokens_per_second']:>16,.0f}{r[name]['eval_tokens_per_second']:>16,.0f}"
                f"{r[name]['val_ppl']:>12.4f}"
                for name in ("fp32", "bf16")
            ),
            f"bf16 trains {precisions['train_speedup']:.2f}x as fast as fp32 here"
            + ("" if precisions["native_bf16"] else " (this CPU has no bf16 hardware: it is emulated)")
            + f"; its perplexity differs by {precisions['ppl_difference']:+.3%} "
            f"({r['bf16']['val_tokens']:,} validation tokens, the same model)",
        ]
    return "\n".join(lines)
