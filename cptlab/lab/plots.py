"""The lab's figures: shown inline in a notebook and saved as PNG in the run folder. Every number
that carries an interval is drawn with it (error bars or a band: the paired 95% bootstrap of
``cptlab.core.uncertainty``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cptlab.core.files import atomic_path
from cptlab.core.results import read_step

BLUE, ORANGE, GREEN, PURPLE, RED, GREY = "#4c72b0", "#dd8452", "#55a868", "#8172b2", "#c44e52", "#8c8c8c"


def _save(fig, run_dir, name: str) -> Path:
    path = Path(run_dir) / "plots" / name
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


def _plain_numbers(axis, subs: tuple[float, ...] = (1.0,)) -> None:
    """Log-axis ticks as 100, 1k, 10k instead of 10^2, 10^3."""

    def fmt(v, _):
        return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def _err(rec: dict | None, value: float, scale: float = 1.0) -> list[list[float]] | None:
    """matplotlib's [[below], [above]] from an interval record."""
    if not rec:
        return None
    return [[max(0.0, (value - rec["low"]) * scale)], [max(0.0, (rec["high"] - value) * scale)]]


def _finite(v: float, default: float = 0.0) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else default


def ema(values: list[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (the first points are not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return np.asarray(out)


def baseline_bars(run_dir):
    s1 = read_step(run_dir, 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    vals = [s1["baseline_code_ppl"], s1["baseline_general_ppl"]]
    cis = [(s1.get(k) or {}).get("interval") for k in ("code", "general")]
    errs = np.hstack([_err(ci, v) or [[0], [0]] for ci, v in zip(cis, vals)])
    bars = ax.bar(["code (val split)", "English"], vals, color=[BLUE, ORANGE], yerr=errs, capsize=6)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], label_type="center", color="white", fontweight="bold")
    ax.set_ylim(0, max(v + e for v, e in zip(vals, errs[1])) * 1.15)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(
        f"Step 1: base model ({s1['preset']}) before CPT\ncode is {vals[0] / vals[1]:.2f}x English; bars: 95% "
        "interval over documents",
        fontsize=10,
    )
    _save(fig, run_dir, "step1_baseline.png")
    return fig


def corpus_figures(run_dir, tokenizer=None):
    s2 = read_step(run_dir, 2)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lengths = np.maximum(np.asarray(s2["doc_token_lengths"]), 1)
    bins = np.logspace(0, np.log10(lengths.max()) + 0.05, 40)
    ax.hist(lengths, bins=bins, color=BLUE)
    ax.set_xscale("log")
    _plain_numbers(ax.xaxis)
    ax.axvline(s2["block_size"], color="k", ls="--", label=f"block_size = {s2['block_size']}")
    ax.axvline(
        float(np.median(lengths)), color=ORANGE, ls=":", label=f"median document = {int(np.median(lengths)):,} tokens"
    )
    ax.set_xlabel("document length, tokens (log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"Step 2: {s2['n_docs']} documents, {s2['n_tokens']:,} tokens", fontsize=10)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, run_dir, "step2_doc_lengths.png")
    return fig


def loss_curve(run_dir):
    """Step 3's diagnostics: the loss (raw and smoothed) with the schedule, the pre-clip gradient
    norm against the clip, and both perplexities at the curve's points."""
    s3 = read_step(run_dir, 3)
    log = s3["log"]
    steps = [r["step"] for r in log]
    loss = [r["loss"] for r in log]
    fig, (ax, axn, axp) = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True)
    ax.plot(steps, loss, color=BLUE, alpha=0.3, lw=1, label="training loss (each step)")
    ax.plot(steps, ema(loss), color=BLUE, lw=2.2, label="smoothed (EMA 0.9)")
    ax.set_ylabel("loss, nats/token")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in log], color=ORANGE, lw=1.5, label="learning rate")
    peak = max(r["lr"] for r in log)
    exp = int(np.floor(np.log10(peak))) if peak > 0 else 0
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 10**exp:g}"))
    ax2.set_ylabel(f"learning rate, x1e{exp}")
    ax2.set_ylim(0, peak * 1.15)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
    ax.set_title("Step 3: CPT loss, raw and smoothed, with the warm-up + cosine schedule", fontsize=10)

    norms = [r["grad_norm"] for r in log]
    clip = (s3.get("hparams") or {}).get("grad_clip")
    axn.plot(steps, norms, color=PURPLE, lw=1.2, label="gradient norm before clipping")
    if clip:
        axn.axhline(clip, color=RED, ls="--", lw=1.2, label=f"clip = {clip:g}")
        n_clipped = sum(n > clip for n in norms)
        axn.set_title(
            f"clipped on {n_clipped} of {len(norms)} steps: each of those gradients was rescaled to norm {clip:g} "
            "before AdamW's moments took it in",
            fontsize=9,
        )
    axn.set_ylim(0, max(norms + [clip or 0]) * 1.15)
    axn.set_ylabel("global grad norm")
    axn.legend(fontsize=8, loc="upper right")

    curve = s3.get("curve") or []
    if curve:
        cs = [p["step"] for p in curve]
        c0, g0 = curve[0]["code_ppl"], curve[0]["general_ppl"]
        for key, base, colour, name in (("code", c0, BLUE, "code"), ("general", g0, ORANGE, "English")):
            axp.plot(
                cs,
                [p[f"{key}_ppl"] / base for p in curve],
                "o-",
                color=colour,
                ms=4,
                label=f"{name}: {base:,.0f} -> {curve[-1][f'{key}_ppl']:,.0f}",
            )
        axp.axhline(1.0, color=GREY, lw=0.8)
        axp.set_ylabel("perplexity / base model's")
        axp.legend(fontsize=8, loc="center right")
        axp.set_title("code and English perplexity at the curve's points (the headline's tokens)", fontsize=9)
    axp.set_xlabel("optimizer step")
    fig.tight_layout()
    _save(fig, run_dir, "step3_loss_lr.png")
    return fig


def before_after(run_dir):
    """Absolute perplexities (log axis) and the relative change of each, with paired intervals."""
    s4 = read_step(run_dir, 4)
    fig, (ax, axr) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.arange(2)
    before = [s4["baseline_code_ppl"], s4["baseline_general_ppl"]]
    after = [s4["adapted_code_ppl"], s4["adapted_general_ppl"]]
    b1 = ax.bar(x - 0.2, before, 0.4, label="base", color=GREY)
    b2 = ax.bar(x + 0.2, after, 0.4, label="after CPT", color=BLUE)
    ax.bar_label(b1, fmt="%.0f", fontsize=8)
    ax.bar_label(b2, fmt="%.0f", fontsize=8)
    ax.set_yscale("log")
    _plain_numbers(ax.yaxis, subs=(1.0, 2.0, 5.0))
    shown = [v for v in before + after if math.isfinite(v) and v > 0] or [1.0]
    ax.set_ylim(min(shown) * 0.5, max(shown) * 1.6)
    ax.set_xticks(x, ["code", "English"])
    ax.set_ylabel("perplexity (log scale)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("perplexity before and after", fontsize=10)

    change = [-100 * s4["code_ppl_drop"], 100 * (s4["forgetting_ratio"] - 1)]
    cis = [s4.get("code_ppl_drop_ci"), s4.get("forgetting_ratio_ci")]
    errs = [[0, 0], [0, 0]]
    if all(cis):
        lo_c, hi_c = -100 * cis[0]["high"], -100 * cis[0]["low"]
        lo_g, hi_g = 100 * (cis[1]["low"] - 1), 100 * (cis[1]["high"] - 1)
        errs = [[change[0] - lo_c, change[1] - lo_g], [hi_c - change[0], hi_g - change[1]]]
    # a run that did not train (a zero drop, a zero-width or inverted interval) or a NaN still draws
    errs = [[_finite(max(0.0, e)) for e in side] for side in errs]
    change = [_finite(c) for c in change]
    bars = axr.bar(x, change, 0.5, color=[BLUE, ORANGE], yerr=errs, capsize=6)
    axr.bar_label(bars, labels=[f"{round(c, 1) + 0.0:+.1f}%" for c in change], padding=4, fontsize=9)  # no "-0.0%"
    axr.axhline(0, color="k", lw=0.8)
    lo, hi = min(change[0] - errs[0][0], 0), max(change[1] + errs[1][1], 0)
    axr.set_ylim(lo * 1.25 - 2, hi * 1.25 + 4)
    axr.set_xticks(x, ["code", "English"])
    axr.set_ylabel("perplexity change, % (paired 95% CI)")
    axr.set_title("relative change: what CPT gained and cost", fontsize=10)
    fig.suptitle(
        f"Step 4: code {round(-100 * s4['code_ppl_drop'], 1) + 0.0:+.1f}%, forgetting ratio "
        f"{s4['forgetting_ratio']:.3f}",
        fontsize=11,
    )
    fig.tight_layout()
    _save(fig, run_dir, "step4_before_after.png")
    return fig


def _band(ax, steps, curve, key, scale=1.0, colour=BLUE):
    cis = [p.get(f"{key}_ci") for p in curve]
    if all(cis[1:]):
        lo = [scale * (c["low"] if c else p[key]) for c, p in zip(cis, curve)]
        hi = [scale * (c["high"] if c else p[key]) for c, p in zip(cis, curve)]
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, lw=0, label="paired 95% interval")


def forgetting_curve(run_dir):
    """Code gain (top) and forgetting ratio (bottom, with the retention floor) against the CPT
    step, each with its interval; the curve's last point is the headline."""
    s3 = read_step(run_dir, 3)
    curve = s3.get("curve") or []
    fig, (ax, axf) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    floor = (s3.get("floor") or {}).get("retention_floor")
    if curve:
        steps = [p["step"] for p in curve]
        ax.plot(steps, [100 * p["code_ppl_drop"] for p in curve], "o-", color=BLUE, ms=4, label="code perplexity drop")
        _band(ax, steps, curve, "code_ppl_drop", 100, BLUE)
        ax.set_ylabel("code ppl drop, %")
        ax.legend(fontsize=8, loc="lower right")
        ratios = [p["forgetting_ratio"] for p in curve]
        axf.plot(steps, ratios, "s-", color=ORANGE, ms=4, label="forgetting ratio")
        _band(axf, steps, curve, "forgetting_ratio", 1.0, ORANGE)
        axf.set_ylabel("forgetting ratio")
        if floor:
            lo = (
                min(min(ratios), *(p["forgetting_ratio_ci"]["low"] for p in curve if p.get("forgetting_ratio_ci")), 1.0)
                - 0.005
            )
            hi = (
                max(
                    max(ratios),
                    *(p["forgetting_ratio_ci"]["high"] for p in curve if p.get("forgetting_ratio_ci")),
                    floor,
                )
                + 0.01
            )
            axf.set_ylim(lo, hi)
            axf.axhspan(lo, floor, color=GREEN, alpha=0.08, label=f"under the retention floor ({floor})")
            axf.axhline(floor, color=RED, ls="--", lw=1.2, label=f"retention floor {floor}")
            first = (s3.get("floor") or {}).get("first_step_above")
            if first is not None:
                for a in (ax, axf):
                    a.axvline(first, color=RED, lw=0.8, ls=":")
                axf.annotate(
                    f"first above the floor: step {first}",
                    (first, floor),
                    textcoords="offset points",
                    xytext=(-4, 6),
                    ha="right",
                    fontsize=8,
                    color=RED,
                )
        axf.legend(fontsize=8, loc="upper left")
    axf.set_xlabel("CPT step")
    ax.set_title(
        "The forgetting curve: what each step gains on code (top) and costs in English (bottom)\n"
        "scored on the headline's tokens: the last point is step 4's number",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, run_dir, "step4_forgetting_curve.png")
    return fig


def _label(v: dict, same: dict[tuple, list[str]]) -> str | None:
    key = (round(v["forgetting_ratio"], 6), round(v["code_ppl_drop"], 6))
    names = same[key]
    if v["name"] != names[0]:
        return None  # one label for variants at one point (pure CPT = interp a=1)
    return " = ".join(names)


def _tradeoff_point(ax, v: dict, colour: str, **style) -> None:
    """A variant at (forgetting ratio, code drop in %), with both paired intervals as error bars."""
    x = v["forgetting_ratio"]
    ax.errorbar(
        x,
        100 * v["code_ppl_drop"],
        xerr=_err(v.get("forgetting_ratio_ci"), x),
        yerr=_err(v.get("code_ppl_drop_ci"), v["code_ppl_drop"], 100),
        fmt="o",
        color=colour,
        **style,
    )


def tradeoff_plot(run_dir):
    """Code gain against forgetting for every variant, with paired intervals, the region under the
    retention floor shaded and the Pareto front drawn."""
    s4 = read_step(run_dir, 4)
    study = s4.get("study") or {}
    variants = study.get("variants") or [
        {
            "name": "pure CPT",
            "choice": "pure_cpt",
            "code_ppl_drop": s4["code_ppl_drop"],
            "forgetting_ratio": s4["forgetting_ratio"],
        }
    ]
    colours = {
        "interpolation": ORANGE,
        "lora": PURPLE,
        "replay": GREEN,
        "pure_cpt": BLUE,
    }  # pure CPT drawn last: it hides interp a=1
    front = [v for v in variants if v["name"] in set(study.get("pareto_front", []))]
    fig, ax = plt.subplots(figsize=(8, 5))
    floor = study.get("retention_floor")
    xs = [v["forgetting_ratio"] for v in variants]
    if floor:
        ax.axvspan(
            min(xs + [floor]) - 0.02, floor, color=GREEN, alpha=0.07, label=f"under the retention floor ({floor})"
        )
        ax.axvline(floor, color=RED, ls="--", lw=1.2)
    interp = sorted((v for v in variants if v["choice"] == "interpolation"), key=lambda v: v["alpha"])
    if interp:
        ax.plot(
            [v["forgetting_ratio"] for v in interp],
            [100 * v["code_ppl_drop"] for v in interp],
            color=ORANGE,
            lw=0.8,
            alpha=0.6,
        )
    if front:
        pts = sorted(front, key=lambda v: (v["forgetting_ratio"], v["code_ppl_drop"]))
        ax.step(
            [v["forgetting_ratio"] for v in pts],
            [100 * v["code_ppl_drop"] for v in pts],
            where="post",
            color="k",
            lw=1,
            ls="-",
            alpha=0.6,
            label="Pareto front",
            zorder=2,
        )
    for choice, colour in colours.items():
        for i, v in enumerate(v for v in variants if v["choice"] == choice):
            _tradeoff_point(
                ax,
                v,
                colour,
                ms=8 if v in front else 5,
                capsize=2,
                lw=0.8,
                zorder=3,
                label=choice.replace("_", " ") if i == 0 else None,
            )
    same: dict[tuple, list[str]] = {}
    for v in variants:
        same.setdefault((round(v["forgetting_ratio"], 6), round(v["code_ppl_drop"], 6)), []).append(v["name"])
    offsets = {"pure_cpt": (8, -12), "replay": (-8, 6), "lora": (8, 4), "interpolation": (8, -11)}
    for v in variants:
        text = _label(v, same)
        if text:
            dx, dy = offsets[v["choice"]]
            ax.annotate(
                text,
                (v["forgetting_ratio"], 100 * v["code_ppl_drop"]),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=7.5,
                ha="left" if dx > 0 else "right",
            )
    rec = study.get("recommendation")
    if rec:
        ax.scatter(
            [rec["forgetting_ratio"]],
            [100 * rec["code_ppl_drop"]],
            s=260,
            facecolors="none",
            edgecolors=RED,
            lw=1.5,
            zorder=4,
            label=f"chosen: {rec['name']}",
        )
    ax.set_xlabel("forgetting ratio (English ppl after / before; lower is better)")
    ax.set_ylabel("code perplexity drop, % (higher is better)")
    ax.set_title("Gain on code against English forgotten (bars: paired 95% intervals)", fontsize=10)
    ax.margins(x=0.08, y=0.1)
    ax.legend(fontsize=7.5, loc="lower right")
    _save(fig, run_dir, "step4_tradeoff.png")
    return fig


def lora_sweep_plot(sweep: dict, run_dir=None):
    """The LoRA sweep against full CPT's learning-rate curve: code gain against forgetting, so a
    LoRA point is compared with full CPT at the same gain (``benchmarks/lora_sweep.py``)."""
    rows = sweep["rows"]
    fig, ax = plt.subplots(figsize=(8, 5))
    full = sorted((r for r in rows if r["kind"] == "full"), key=lambda r: r["lr"])
    ax.plot(
        [r["forgetting_ratio"] for r in full],
        [100 * r["code_ppl_drop"] for r in full],
        "o-",
        color=BLUE,
        lw=1.5,
        label="full CPT, lr 1e-5 .. 1e-4",
    )
    for r in full:
        ax.annotate(
            f"lr {r['lr']:g}",
            (r["forgetting_ratio"], 100 * r["code_ppl_drop"]),
            textcoords="offset points",
            xytext=(-6, 4),
            ha="right",
            fontsize=7.5,
            color=BLUE,
        )
    styles = {
        ("all_linear", 8): ("s", PURPLE),
        ("all_linear", 64): ("D", PURPLE),
        ("attention", 8): ("s", GREEN),
        ("attention", 64): ("D", GREEN),
    }
    for (targets, rank), (marker, colour) in styles.items():
        pts = sorted(
            (r for r in rows if r["kind"] == "lora" and r["lora_targets"] == targets and r["lora_r"] == rank),
            key=lambda r: r["lr"],
        )
        if not pts:
            continue
        ax.plot(
            [r["forgetting_ratio"] for r in pts],
            [100 * r["code_ppl_drop"] for r in pts],
            marker=marker,
            color=colour,
            ls=":",
            lw=1,
            ms=6,
            label=f"LoRA {targets.replace('_', ' ')}, r={rank} (lr 1e-4, 5e-4, 1e-3)",
        )
    floor = sweep.get("retention_floor")
    if floor:
        ax.axvline(floor, color=RED, ls="--", lw=1.2, label=f"retention floor {floor}")
    ax.set_xlabel("forgetting ratio (English ppl after / before)")
    ax.set_ylabel("code perplexity drop, %")
    ax.set_title(
        f"LoRA against full CPT at matched code gain ({sweep['preset']} preset, {sweep['steps']} steps, seed "
        f"{sweep['seed']})",
        fontsize=10,
    )
    ax.legend(fontsize=7.5, loc="lower right")
    ax.margins(x=0.06, y=0.1)
    if run_dir is not None:
        _save(fig, run_dir, "step4_lora_sweep.png")
    return fig


def experiments_plot(run_dir):
    """The recipe's experiments: each variant's training loss (smoothed) per step, and where each
    ends on code gain against English forgetting, with paired 95% intervals."""
    import json

    exp = json.loads((Path(run_dir) / "experiments.json").read_text())
    colours = {"recipe": BLUE, "lr 6e-4": RED, "no warm-up": ORANGE, "6e-4, no warm-up": PURPLE, "flat rate": GREEN}
    fig, (axl, axt) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for v in exp["variants"]:
        c = colours.get(v["name"], GREY)
        steps = np.arange(1, len(v["losses"]) + 1)
        label = f"{v['name']} (peak {v['peak_lr']:.0e}, warm-up {v['warmup_steps']})"
        axl.plot(steps, ema(v["losses"], 0.8), color=c, lw=2, label=label)
        _tradeoff_point(axt, v, c, capsize=3, ms=6, label=v["name"])
    axl.set_xlabel("optimizer step")
    axl.set_ylabel("training loss, nats/token (EMA 0.8)")
    axl.set_title(f"{exp['budget']} steps each, same seed and batches", fontsize=10)
    axl.legend(fontsize=8)
    axt.axvline(1.0, color=GREY, lw=0.8)
    axt.set_xlabel("forgetting ratio (English ppl after / before)")
    axt.set_ylabel("code perplexity drop, %")
    axt.set_title("where each ends: gain against forgetting, 95% intervals", fontsize=10)
    axt.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, run_dir, "step3_experiments.png")
    return fig


def save_all(run_dir) -> list[Path]:
    figs = [baseline_bars, corpus_figures, loss_curve, before_after, forgetting_curve, tradeoff_plot]
    for f in figs:
        plt.close(f(run_dir))
    return sorted((Path(run_dir) / "plots").glob("*.png"))
