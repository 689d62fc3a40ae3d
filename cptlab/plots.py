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


def forgetting_curve(run_dir):
    """Code gain and forgetting ratio against the CPT step, with the retention floor."""
    s3 = read_step(run_dir, 3)
    curve = s3.get("curve") or []
    fig, ax = plt.subplots(figsize=(7, 3.8))
    if curve:
        steps = [p["step"] for p in curve]
        ax.plot(steps, [100 * p["code_ppl_drop"] for p in curve], "o-", color="#4c72b0", label="code ppl drop (%)")
        ax.set_ylabel("code perplexity drop, %", color="#4c72b0")
        ax2 = ax.twinx()
        ax2.plot(steps, [p["forgetting_ratio"] for p in curve], "s-", color="#dd8452", label="forgetting ratio")
        floor = (s3.get("floor") or {}).get("retention_floor")
        if floor:
            ax2.axhline(floor, color="#c44e52", ls="--", lw=1)
            ax2.annotate(f"retention floor {floor}", (steps[0], floor), textcoords="offset points", xytext=(2, 3), fontsize=8, color="#c44e52")
        ax2.set_ylabel("forgetting ratio", color="#dd8452")
    ax.set_xlabel("CPT step")
    ax.set_title("The forgetting curve: what each step gains on code and costs in English")
    _save(fig, run_dir, "step4_forgetting_curve.png")
    return fig


def tradeoff_plot(run_dir):
    """Code gain against forgetting for every variant the run measured (Pareto view)."""
    s4 = read_step(run_dir, 4)
    study = s4.get("study") or {}
    variants = study.get("variants") or [{"name": "pure CPT", "choice": "pure_cpt", "code_ppl_drop": s4["code_ppl_drop"],
                                          "forgetting_ratio": s4["forgetting_ratio"]}]
    colours = {"pure_cpt": "#4c72b0", "replay": "#55a868", "lora": "#8172b2", "interpolation": "#dd8452"}
    front = set(study.get("pareto_front", []))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for choice, colour in colours.items():
        pts = [v for v in variants if v["choice"] == choice]
        if pts:
            ax.scatter([v["forgetting_ratio"] for v in pts], [100 * v["code_ppl_drop"] for v in pts], color=colour,
                       label=choice.replace("_", " "), s=[80 if v["name"] in front else 30 for v in pts], zorder=3)
    interp = sorted((v for v in variants if v["choice"] == "interpolation"), key=lambda v: v["alpha"])
    if interp:
        ax.plot([v["forgetting_ratio"] for v in interp], [100 * v["code_ppl_drop"] for v in interp], color="#dd8452", lw=0.8)
    for v in variants:
        ax.annotate(v["name"], (v["forgetting_ratio"], 100 * v["code_ppl_drop"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if study.get("retention_floor"):
        ax.axvline(study["retention_floor"], color="#c44e52", ls="--", lw=1, label=f"retention floor {study['retention_floor']}")
    rec = study.get("recommendation")
    ax.set_xlabel("forgetting ratio (English ppl after / before; lower is better)")
    ax.set_ylabel("code perplexity drop, % (higher is better)")
    ax.set_title("Gain on code against English forgotten" + (f": choose {rec['name']}" if rec else ""))
    ax.legend(fontsize=8)
    _save(fig, run_dir, "step4_tradeoff.png")
    return fig


def save_all(run_dir) -> list[Path]:
    figs = [baseline_bars, corpus_figures, loss_curve, before_after, forgetting_curve, tradeoff_plot]
    for f in figs:
        plt.close(f(run_dir))
    return sorted((Path(run_dir) / "plots").glob("*.png"))
