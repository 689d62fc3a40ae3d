"""Questions 4.1-4.5: the headline numbers, replay, interpolation, the LoRA set-up and the
choice under a retention floor, mistakes named.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import torch

from checkers.code.harness import Exercise, _num_close, tiny_gpt2
from checkers.core.report import Report
from cptlab.lab.steps import code_ppl_drop, forgetting_ratio
from cptlab.lab.study import LORA_TARGETS, recommend


def check_tradeoff(drop_fn: Callable, ratio_fn: Callable, seed: int | None = None) -> Report:
    """``code_ppl_drop(baseline_code_ppl, adapted_code_ppl)`` and
    ``forgetting_ratio(baseline_general_ppl, adapted_general_ppl)``."""
    ex = Exercise("4.1", drop_fn, seed)

    def body():
        b, a = float(ex.rng.uniform(5, 2000)), 0.0
        a = b * float(ex.rng.uniform(0.3, 0.9))
        got = ex.call(b, a)
        want = code_ppl_drop(b, a)
        hint = "code_ppl_drop = 1 - adapted / baseline: the fraction of the perplexity removed"
        if _num_close(got, 100 * want):
            hint = "mistake: percent instead of fraction. Return 0.35 for a 35% drop, not 35"
        elif _num_close(got, b - a):
            hint = (
                "mistake: a difference instead of a ratio. Perplexities are compared as ratios: 1 - adapted / baseline"
            )
        elif _num_close(got, 1 - b / a) or _num_close(got, a / b - 1):
            hint = "mistake: the ratio inverted. The drop is 1 - adapted / baseline (positive when CPT helped)"
        ex.row(
            "code_ppl_drop",
            _num_close(got, want),
            f"code_ppl_drop({b:.4g}, {a:.4g}) = {want:.6g}",
            repr(got)[:40],
            hint,
        )
        g0 = float(ex.rng.uniform(5, 500))
        g1 = g0 * float(ex.rng.uniform(1.01, 1.5))
        got = ex.call(g0, g1, fn=ratio_fn)
        want = forgetting_ratio(g0, g1)
        hint = "a ratio of English perplexities, after over before: 1.0 means nothing forgotten"
        if _num_close(got, g0 / g1):
            hint = (
                "mistake: the ratio inverted. Divide the adapted English perplexity by the baseline's: above 1 "
                "means forgotten"
            )
        elif _num_close(got, g1 - g0):
            hint = "mistake: a difference instead of a ratio. Divide the two perplexities"
        elif _num_close(got, 100 * want) or _num_close(got, 100 * (want - 1)):
            hint = "mistake: percent instead of fraction. Return the ratio itself (e.g. 1.06), not a percentage"
        ex.row(
            "forgetting_ratio",
            _num_close(got, want),
            f"forgetting_ratio({g0:.4g}, {g1:.4g}) = {want:.6g}",
            repr(got)[:40],
            hint,
        )

    return ex.run(body)


def _whole_counts(got: Any, steps: int, windows: int) -> list[int] | None:
    if not isinstance(got, (list, tuple, np.ndarray)) or len(got) != steps:
        return None
    out = []
    for c in list(got):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer, float, np.floating)) or float(c) != int(c):
            return None
        if not 0 <= int(c) <= windows:
            return None
        out.append(int(c))
    return out


def check_replay_schedule(fn: Callable, seed: int | None = None) -> Report:
    """``replay_schedule(fraction, windows_per_step, steps) -> [English windows of step 1, ...]``:
    whole windows, the run's total at the fraction, every stretch of the run at its share."""
    ex = Exercise("4.2", fn, seed)

    def body():
        cases = [
            (0.05, 4, int(ex.rng.integers(100, 200))),  # 0.2 windows a step: rounding per step gives none
            (float(ex.rng.uniform(0.1, 0.3)), int(ex.rng.choice([8, 16])), int(ex.rng.integers(30, 80))),
            (0.0, 4, int(ex.rng.integers(5, 20))),
        ]
        runs = []
        for f, w, n in cases:
            got = ex.call(f, w, n)
            runs.append((f, w, n, got, _whole_counts(got, n, w)))
        bad = next((r for r in runs if r[4] is None), None)
        if not ex.row(
            "returns",
            bad is None,
            "a list of `steps` whole numbers of English windows, each between 0 and windows_per_step",
            "" if bad is None else f"{type(bad[3]).__name__} {repr(bad[3])[:60]} for steps={bad[2]}",
            "return one count per optimizer step: how many of that step's windows are English",
        ):
            return
        total_bad = next((r for r in runs if abs(sum(r[4]) - r[0] * r[1] * r[2]) >= 1 - 1e-9), None)
        hint = "the run's English windows should total fraction x windows_per_step x steps, within one window"
        if total_bad is not None:
            f, w, n, _, counts = total_bad
            if sum(counts) == 0 and f * w < 1:
                hint = (
                    f"mistake: rounded per step. {f:.0%} of {w} windows is {f * w:.2f} a step, which rounds to 0 at "
                    "every step, so the run replays nothing. Round what the run holds so far, not each step"
                )
            elif abs(sum(counts) - (1 - f) * w * n) < 1:
                hint = "mistake: the code share, not the English share. `fraction` is the share of English windows"
        f, w, n, _, counts = total_bad or runs[1]
        ex.row(
            "total",
            total_bad is None,
            f"{f * w * n:.1f} English windows in all ({f:.3g} x {w} x {n}), within one window",
            f"{sum(counts)}",
            hint,
            fix="step k holds floor(f x w x k) - floor(f x w x (k - 1)): a running total, rounded down",
        )
        spread_bad = None
        for f, w, n, _, counts in runs:
            k = next((k for k in range(1, n + 1) if abs(sum(counts[:k]) - f * w * k) >= 1 - 1e-9), None)
            if k is not None:
                spread_bad = (f, w, n, counts, k)
                break
        hint = "spread the English over the run: after any k steps, about fraction x windows x k of them"
        got = "every stretch at its share"
        if spread_bad is not None:
            f, w, n, counts, k = spread_bad
            got = f"{sum(counts[:k])} English windows after {k} steps, where {f * w * k:.1f} belong"
            if sum(counts[:k]) > f * w * k and total_bad is None:
                hint = (
                    "mistake: front-loaded. The English comes first and the rest of the run is pure CPT, which "
                    "forgets as it did; spread it so that every stretch of the run holds its share"
                )
        ex.row(
            "spread", spread_bad is None, "after every step k, fraction x windows x k English windows, +-1", got, hint
        )

    return ex.run(body)


def _random_state(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    shapes = {"wte.weight": (11, 6), "h.0.attn.c_attn.weight": (6, 18), "h.0.ln_1.bias": (6,)}
    state = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    state["position_ids"] = torch.arange(7)  # an integer buffer: copied, never blended
    return state


def check_interpolate(fn: Callable, seed: int | None = None) -> Report:
    """``interpolate(base_state, cpt_state, alpha) -> state``: (1 - alpha) base + alpha cpt, tensor by
    tensor, as new tensors; integer buffers copied from the base."""
    ex = Exercise("4.3", fn, seed)

    def body():
        base, cpt = _random_state(ex.rng), _random_state(ex.rng)
        cpt["position_ids"] = base["position_ids"].clone()
        floats = [k for k in base if base[k].is_floating_point()]
        alpha = float(ex.rng.uniform(0.2, 0.8))

        def fresh():
            return {k: v.clone() for k, v in base.items()}, {k: v.clone() for k, v in cpt.items()}

        b, c = fresh()
        got = ex.call(b, c, alpha)
        shaped = (
            isinstance(got, dict)
            and set(got) == set(base)
            and all(isinstance(got[k], torch.Tensor) and got[k].shape == base[k].shape for k in base)
        )
        if not ex.row(
            "returns",
            shaped,
            f"a dict with the same {len(base)} keys, each a tensor of its shape",
            sorted(got)[:4].__repr__() if isinstance(got, dict) else type(got).__name__,
            "return a new state dict: one tensor per key of base_state",
        ):
            return
        unchanged = all(torch.equal(b[k], base[k]) and torch.equal(c[k], cpt[k]) for k in base)
        ex.row(
            "inputs_unchanged",
            unchanged,
            "base_state and cpt_state as they were",
            "unchanged" if unchanged else "changed in place",
            "mistake: the inputs changed in place. The study blends the same base again for every alpha: build new "
            "tensors ((1 - alpha) * base[k] + alpha * cpt[k])",
        )
        want = {k: (1 - alpha) * base[k] + alpha * cpt[k] for k in floats}
        reversed_ = {k: alpha * base[k] + (1 - alpha) * cpt[k] for k in floats}
        blend_ok = all(torch.allclose(got[k].float(), want[k], atol=1e-6) for k in floats)
        hint = "theta = (1 - alpha) * base + alpha * cpt, for every floating-point tensor"
        if not blend_ok and all(torch.allclose(got[k].float(), reversed_[k], atol=1e-6) for k in floats):
            hint = "mistake: alpha weights the base. alpha = 0 is the base model, alpha = 1 the CPT model"
        ex.row(
            "blend", blend_ok, f"(1 - {alpha:.3f}) * base + {alpha:.3f} * cpt", "equal" if blend_ok else "other", hint
        )
        ends = []
        for a, ref in ((0.0, base), (1.0, cpt)):
            b, c = fresh()
            out = ex.call(b, c, a)
            ends.append(
                isinstance(out, dict) and all(k in out and torch.allclose(out[k].float(), ref[k]) for k in floats)
            )
        hint = "alpha = 0 gives the base's tensors and alpha = 1 the CPT model's"
        if not all(ends):
            hint = "mistake: the endpoints swapped or off: alpha = 0 must give the base model, alpha = 1 the CPT model"
        ex.row(
            "endpoints", all(ends), "alpha 0 -> base, alpha 1 -> cpt", f"alpha 0: {ends[0]}, alpha 1: {ends[1]}", hint
        )
        pos = got["position_ids"]
        ints_ok = not pos.is_floating_point() and torch.equal(pos, base["position_ids"])
        ex.row(
            "integer_buffers",
            ints_ok,
            "position_ids (int64) copied from the base",
            f"{pos.dtype}",
            "mistake: an integer buffer blended (it came back as floats). Blend floating-point tensors only; copy "
            "the others from the base (tensor.is_floating_point())",
        )

    return ex.run(body)


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
REGEX_SECONDS = 10.0

# peft's rule for a string target_modules (peft.tuners.tuners_utils.match_target_against_key): the
# pattern must match the whole module name. Run in a bare interpreter of its own, with a time limit,
# so a pattern that backtracks forever costs the learner this check and never hangs the grader.
_FULLMATCH = (
    "import json, re, sys; p, names = json.load(sys.stdin); print(json.dumps([n for n in names if re.fullmatch(p, n)]))"
)


def regex_matches(pattern: str, names: list[str], seconds: float = REGEX_SECONDS) -> list[str] | str:
    """The names ``pattern`` fully matches, as peft matches a string ``target_modules``; or why not."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _FULLMATCH],
            input=json.dumps([pattern, names]),
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        return f"the regular expression took over {seconds:g} s to match {len(names)} module names"
    if done.returncode != 0:
        return f"not a regular expression: {done.stderr.strip().splitlines()[-1]}"[:120]
    return json.loads(done.stdout)


def _lora_targets_ok(targets: Any) -> bool:
    """A regular expression (one string, as peft documents it) or a list of module names."""
    if isinstance(targets, str):
        return bool(targets)
    return isinstance(targets, (list, tuple, set)) and all(isinstance(t, str) and _PLAIN_NAME.match(t) for t in targets)


def check_lora_config(fn: Callable, seed: int | None = None) -> Report:
    """``lora_config(r, alpha) -> peft.LoraConfig`` for GPT-2: adapters on every linear layer
    (c_attn, c_proj, c_fc), fan_in_fan_out for its Conv1D, rank and alpha as given, the base frozen."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from peft.utils import INCLUDE_LINEAR_LAYERS_SHORTHAND  # "all-linear", peft's own name, not a pattern

    ex = Exercise("4.4", fn, seed)

    def body():
        r = int(ex.rng.choice([4, 8, 16]))
        # 3r, 5r or 6r (12 to 96): never r, so swapped arguments always show, and never 8, 16, 32, 64 or 2r,
        # so an alpha fixed at one of the usual constants fails on every call, not on the calls that draw it
        alpha = int(r * ex.rng.choice([3, 5, 6]))
        got = ex.call(r, alpha)
        ok = isinstance(got, LoraConfig) and _lora_targets_ok(got.target_modules)
        if not ex.row(
            "returns",
            ok,
            "a peft.LoraConfig whose target_modules lists module names or is one regular expression",
            type(got).__name__ if not isinstance(got, LoraConfig) else f"target_modules={got.target_modules!r}"[:60],
            "return LoraConfig(r=..., lora_alpha=..., target_modules=[...], ...) from peft",
        ):
            return
        fan_in_fan_out = bool(got.fan_in_fan_out)  # peft sets it itself, with a warning, once applied
        model = tiny_gpt2(int(ex.rng.integers(1 << 31)))
        want = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in LORA_TARGETS["all_linear"]}
        got = copy.deepcopy(got)
        if isinstance(got.target_modules, str) and got.target_modules.lower() != INCLUDE_LINEAR_LAYERS_SHORTHAND:
            # peft's regular-expression form, matched out of this process
            matched = regex_matches(got.target_modules, [n for n, _ in model.named_modules() if n])
            if isinstance(matched, str):
                ex.row(
                    "targets",
                    False,
                    "adapters on c_attn, c_proj and c_fc of every block",
                    matched,
                    "a target_modules pattern must match the whole module name, quickly: or list the names",
                )
                return
            got.target_modules = set(matched)
        if got.modules_to_save and not all(_PLAIN_NAME.match(m) for m in got.modules_to_save):
            got.modules_to_save = ["lm_head"]  # peft turns these into patterns; any entry unfreezes base weights
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peft_model = get_peft_model(model, got)
        except (ValueError, TypeError, KeyError) as exc:
            ex.row(
                "targets",
                False,
                "adapters on c_attn, c_proj and c_fc of every block",
                f"peft refused: {str(exc).splitlines()[0]}"[:100],
                "mistake: targets that match nothing. GPT-2's linear layers are named c_attn, c_proj and c_fc "
                "(print(model) shows them); q_proj / v_proj are other models' names",
            )
            return
        adapted = {
            n.replace("base_model.model.", "")
            for n, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and m.lora_A
        }
        hint = "target c_attn, c_proj and c_fc: every linear layer of every block (the lab's sweep chose all of them)"
        if adapted and adapted < want and all(".attn." in n for n in adapted):
            hint = "mistake: attention only. The lab's LoRA adapts every linear layer, the MLP's c_fc and c_proj too"
        elif not adapted:
            hint = "mistake: targets that match nothing. GPT-2's linear layers are named c_attn, c_proj and c_fc"
        ex.row(
            "targets",
            adapted == want,
            f"adapters on the {len(want)} linear layers (c_attn, c_proj, c_fc of each block)",
            f"{len(adapted)} adapted" + (f", e.g. {sorted(adapted - want)[0]}" if adapted - want else ""),
            hint,
        )
        ex.row(
            "fan_in_fan_out",
            fan_in_fan_out,
            "fan_in_fan_out=True",
            f"fan_in_fan_out={got.fan_in_fan_out!r}",
            "mistake: fan_in_fan_out missing. GPT-2's c_attn, c_proj and c_fc are Conv1D modules that store their "
            "weight as [in, out]; peft patches this with a warning, say it yourself",
        )
        ex.row(
            "rank_alpha",
            got.r == r and got.lora_alpha == alpha,
            f"r={r}, lora_alpha={alpha} (the arguments)",
            f"r={got.r}, lora_alpha={got.lora_alpha}",
            "mistake: r and lora_alpha swapped. r is the adapters' rank (their width); lora_alpha scales their "
            "output by alpha / r"
            if (got.r, got.lora_alpha) == (alpha, r)
            else f"mistake: lora_alpha fixed at {got.lora_alpha!r}, not the argument. The study sweeps alpha with the "
            "rank (alpha = 2r): pass lora_alpha=alpha"
            if got.r == r
            else "use the function's arguments as they are named: the rank, then the scale",
            fix="LoraConfig(r=r, lora_alpha=alpha, ...)",
        )
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
        ex.row(
            "base_frozen",
            not trainable,
            "only the LoRA matrices trainable",
            f"{len(trainable)} base tensors trainable" + (f", e.g. {trainable[0]}" if trainable else ""),
            "mistake: the base not frozen. Keep bias='none' and no modules_to_save: GPT-2's own weights must stay "
            "bit-identical",
        )

    return ex.run(body)


def _random_variants(rng: np.random.Generator, floor: float) -> list[dict]:
    names = ["pure CPT", "replay 5%", "replay 25%", "LoRA r=8", "interp a=0.5", "interp a=0.8"]
    choices = ["pure_cpt", "replay", "replay", "lora", "interpolation", "interpolation"]
    out = []
    for name, choice in zip(names, choices):
        out.append(
            {
                "name": name,
                "choice": choice,
                "code_ppl_drop": float(rng.uniform(0.0, 0.6)),
                "forgetting_ratio": float(rng.uniform(0.99, floor + 0.1)),
            }
        )
    # the largest gain sits above the floor, so ignoring the floor shows
    top = max(out, key=lambda v: v["code_ppl_drop"])
    top["forgetting_ratio"] = floor + 0.05
    return out


def check_choice(fn: Callable, seed: int | None = None) -> Report:
    """``choose_variant(variants, floor) -> name``: the largest code gain whose forgetting ratio
    stays at or under the floor (if none does, the one that forgets least)."""
    ex = Exercise("4.5", fn, seed)

    def body():
        floor = float(ex.rng.uniform(1.02, 1.1))
        for case in ("some under the floor", "at the floor", "none under the floor"):
            vs = _random_variants(ex.rng, floor)
            by_gain = sorted(vs, key=lambda v: v["code_ppl_drop"])
            # the variant that forgets least gains least, so "forgets least" never passes for "best under the floor"
            by_gain[0]["forgetting_ratio"] = 0.98
            # better ones are under the floor too, strictly, so "forgets least" and "<" pick other variants
            by_gain[1]["forgetting_ratio"] = float(ex.rng.uniform(0.99, floor - 1e-3))
            by_gain[-2]["forgetting_ratio"] = float(ex.rng.uniform(0.99, floor - 1e-3))
            if case == "at the floor":  # the best one sits exactly on the floor: "at or under" keeps it
                by_gain[-2]["forgetting_ratio"] = floor
            if case == "none under the floor":
                for v in vs:
                    v["forgetting_ratio"] = floor + float(ex.rng.uniform(0.01, 0.2))
                by_gain[0]["forgetting_ratio"] = floor + 0.005
            got = ex.call([dict(v) for v in vs], floor)
            want = recommend(vs, floor)["name"]
            picked = next((v for v in vs if v["name"] == got), None)
            hint = "keep the variants with forgetting_ratio <= floor, then take the one with the largest code_ppl_drop"
            if picked is not None and picked["forgetting_ratio"] > floor and case != "none under the floor":
                hint = (
                    f"mistake: a choice above the floor ({picked['forgetting_ratio']:.3f} > {floor:.3f}). Filter "
                    "by the floor first"
                )
            elif case != "none under the floor" and picked is by_gain[0]:
                hint = (
                    "mistake: the variant that forgets least. Among those within the floor, take the largest code gain"
                )
            elif case == "at the floor" and picked is not None and picked["name"] != want:
                hint = (
                    "mistake: the floor excluded. A ratio equal to the floor is within it: keep forgetting_ratio "
                    "<= floor"
                )
            elif case == "none under the floor":
                hint = "when no variant stays under the floor, return the one with the smallest forgetting_ratio"
            ex.row(case.replace(" ", "_"), got == want, f"{want!r} ({case}, floor {floor:.3f})", repr(got)[:40], hint)

    return ex.run(body)
