"""The lab's figures: shown inline in a notebook and saved as PNG in the run folder."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .results import read_step


def _save(fig, run_dir, name: str) -> Path:
    path = Path(run_dir) / "plots" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def baseline_bars(run_dir):
    s1 = read_step(run_dir, 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    vals = [s1["baseline_code_ppl"], s1["baseline_general_ppl"]]
    bars = ax.bar(["code (val split)", "English"], vals, color=["#4c72b0", "#dd8452"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"Step 1: base model ({s1['preset']}) before CPT")
    _save(fig, run_dir, "step1_baseline.png")
    return fig


def corpus_figures(run_dir, tokenizer=None):
    s2 = read_step(run_dir, 2)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lengths = np.asarray(s2["doc_token_lengths"])
    ax.hist(np.log10(np.maximum(lengths, 1)), bins=40, color="#4c72b0")
    ax.axvline(np.log10(s2["block_size"]), color="k", ls="--", label=f"block_size = {s2['block_size']}")
    ax.set_xlabel("document length, log10(tokens)")
    ax.set_ylabel("documents")
    ax.set_title(f"Step 2: {s2['n_docs']} documents, {s2['n_tokens']:,} tokens")
    ax.legend()
    _save(fig, run_dir, "step2_doc_lengths.png")
    return fig


def loss_curve(run_dir):
    s3 = read_step(run_dir, 3)
    log = s3["log"]
    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(steps, [r["loss"] for r in log], color="#4c72b0", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)", color="#4c72b0")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in log], color="#dd8452", label="learning rate")
    ax2.set_ylabel("learning rate", color="#dd8452")
    ax.set_title("Step 3: CPT loss with the warm-up + cosine schedule")
    _save(fig, run_dir, "step3_loss_lr.png")
    return fig


def before_after(run_dir):
    s4 = read_step(run_dir, 4)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(2)
    before = [s4["baseline_code_ppl"], s4["baseline_general_ppl"]]
    after = [s4["adapted_code_ppl"], s4["adapted_general_ppl"]]
    b1 = ax.bar(x - 0.2, before, 0.4, label="base", color="#8c8c8c")
    b2 = ax.bar(x + 0.2, after, 0.4, label="after CPT", color="#4c72b0")
    ax.bar_label(b1, fmt="%.1f")
    ax.bar_label(b2, fmt="%.1f")
    ax.set_xticks(x, ["code", "English"])
    ax.set_ylabel("perplexity")
    ax.set_title(f"Step 4: code -{100 * s4['code_ppl_drop']:.0f}%, forgetting ratio {s4['forgetting_ratio']:.2f}")
    ax.legend()
    _save(fig, run_dir, "step4_before_after.png")
    return fig


def tradeoff_plot(run_dir):
    """Code gain against forgetting for every variant the run measured (Pareto view)."""
    s4 = read_step(run_dir, 4)
    points = [("pure CPT", s4["code_ppl_drop"], s4["forgetting_ratio"])]
    for v in s4.get("study", {}).get("variants", []):
        points.append((v["name"], v["code_ppl_drop"], v["forgetting_ratio"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([p[2] for p in points], [100 * p[1] for p in points], color="#4c72b0")
    for name, drop, ratio in points:
        ax.annotate(name, (ratio, 100 * drop), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([1.0], [0.0], marker="x", color="k")
    ax.annotate("base", (1.0, 0.0), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axvline(1.0, color="#8c8c8c", lw=0.8)
    ax.set_xlabel("forgetting ratio (English ppl after / before; lower is better)")
    ax.set_ylabel("code perplexity drop, % (higher is better)")
    ax.set_title("Step 4: gain on code against English forgotten")
    _save(fig, run_dir, "step4_tradeoff.png")
    return fig


def save_all(run_dir) -> list[Path]:
    figs = [baseline_bars, corpus_figures, loss_curve, before_after, tradeoff_plot]
    for f in figs:
        plt.close(f(run_dir))
    return sorted((Path(run_dir) / "plots").glob("*.png"))
