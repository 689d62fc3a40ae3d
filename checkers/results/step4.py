"""Step 4's results: the trade-off's headline numbers and the study of the production choices."""

from __future__ import annotations

import math
from pathlib import Path

from checkers.core.report import Report
from checkers.results.common import (
    NOTEBOOKS,
    Missing,
    _interval,
    _paired_intervals,
    _ppl_from_raw,
    _start,
    _units,
    close,
    get,
    load,
    num,
    opt,
)
from cptlab.core.results import STEP_FILES
from cptlab.core.uncertainty import drop_interval, ratio_interval


def _check_step4(run_dir: str | Path, preset: str | None = None) -> Report:
    ck, d, T = _start(run_dir, 4, preset)
    if d is None:
        return ck
    s1, why1 = load(run_dir, 1)
    ck.check(
        "s4.step1_present",
        f"{STEP_FILES[1]} to compare against",
        lambda: (s1 is not None, why1),
        f"run {NOTEBOOKS[1]} first",
    )
    for name in ("code", "general"):
        _ppl_from_raw(ck, f"s4.adapted_{name}_ppl_from_raw", d, f"adapted_{name}_ppl", name, T)
        ck.check(
            f"s4.baseline_{name}_matches_step1",
            f"baseline_{name}_ppl equal to step 1's",
            lambda name=name: (
                s1 is not None and close(num(d, f"baseline_{name}_ppl"), num(s1, f"baseline_{name}_ppl"), T["rel_tol"]),
                f"step 4 {num(d, f'baseline_{name}_ppl'):.6g}, step 1 "
                f"{num(s1, f'baseline_{name}_ppl') if s1 else 'missing'}",
            ),
            "step 4 must compare against the baseline measured in step 1: re-run step 4",
        )
        ck.check(
            f"s4.same_{name}_tokens",
            f"the {name} set scored on the same tokens as the baseline",
            lambda name=name: (
                s1 is not None
                and num(d, f"{name}.tokens") == num(s1, f"{name}.tokens")
                and get(d, f"{name}.tokens_sha") == get(s1, f"{name}.tokens_sha"),
                f"{int(num(d, f'{name}.tokens'))} tokens vs {int(num(s1, f'{name}.tokens')) if s1 else 'missing'}",
            ),
            "before/after numbers are only comparable on identical tokens and protocol",
        )

    def drop_formula():
        want = 1 - num(d, "adapted_code_ppl") / num(d, "baseline_code_ppl")
        return close(
            num(d, "code_ppl_drop"), want, T["rel_tol"]
        ), f"code_ppl_drop={num(d, 'code_ppl_drop'):.6g}, recomputed {want:.6g}"

    ck.check(
        "s4.code_ppl_drop_consistent",
        "code_ppl_drop = 1 - adapted_code_ppl / baseline_code_ppl",
        drop_formula,
        "recompute code_ppl_drop from the two perplexities; do not edit it by hand",
    )

    def ratio_formula():
        want = num(d, "adapted_general_ppl") / num(d, "baseline_general_ppl")
        return close(
            num(d, "forgetting_ratio"), want, T["rel_tol"]
        ), f"forgetting_ratio={num(d, 'forgetting_ratio'):.6g}, recomputed {want:.6g}"

    ck.check(
        "s4.forgetting_ratio_consistent",
        "forgetting_ratio = adapted_general_ppl / baseline_general_ppl",
        ratio_formula,
        "recompute forgetting_ratio from the two English perplexities; do not edit it by hand",
    )
    s3, why3 = load(run_dir, 3)
    if "code_ppl_drop_ci" not in d or not opt(d, "code.units"):
        ck.check(
            "s4.intervals",
            "the code drop and forgetting ratio with their 95% intervals",
            lambda: (False, "no intervals: made by an older cptlab"),
            "re-run step 3 (notebooks/03_cpt.ipynb), then step 4: this cptlab gives every headline number its interval",
        )
    else:

        def base(name: str) -> dict:
            if opt(s1, f"{name}.units"):
                return get(s1, f"{name}.units")
            curve = opt(s3, "curve")
            if isinstance(curve, list) and curve and isinstance(curve[0], dict) and curve[0].get(f"{name}_units"):
                return curve[0][f"{name}_units"]
            raise Missing(
                "no per-document sums of the baseline (step 1 or step 3's step-0 point): re-run step 3, then step 4"
            )

        units = {
            name: (lambda name=name: _units(d, f"{name}.units", num(d, f"{name}.nll_sum"), num(d, f"{name}.tokens"), T))
            for name in ("code", "general")
        }
        _interval(
            ck,
            "s4.code_ppl_drop_interval",
            d,
            "code_ppl_drop",
            "code_ppl_drop_ci",
            lambda: drop_interval(base("code"), units["code"]()),
            T,
        )
        _interval(
            ck,
            "s4.forgetting_ratio_interval",
            d,
            "forgetting_ratio",
            "forgetting_ratio_ci",
            lambda: ratio_interval(base("general"), units["general"]()),
            T,
        )

    def curve_end():
        curve = opt(s3, "curve")
        last = curve[-1] if isinstance(curve, list) and curve else None
        if not isinstance(last, dict):
            return False, f"no forgetting curve in {STEP_FILES[3]} ({why3 or 'empty'})"
        ok = close(num(last, "code_ppl"), num(d, "adapted_code_ppl"), T["rel_tol"]) and close(
            num(last, "general_ppl"), num(d, "adapted_general_ppl"), T["rel_tol"]
        )
        return ok, (
            f"curve step {int(num(last, 'step'))}: {num(last, 'code_ppl'):.6g}/{num(last, 'general_ppl'):.6g}; "
            f"headline {num(d, 'adapted_code_ppl'):.6g}/{num(d, 'adapted_general_ppl'):.6g}"
        )

    ck.check(
        "s4.curve_ends_at_headline",
        "the forgetting curve's last point is the headline (same model, tokens and protocol)",
        curve_end,
        "re-run step 3 (notebooks/03_cpt.ipynb), then step 4: the curve must be scored on the headline's tokens",
    )
    ck.check(
        "s4.code_ppl_drop",
        f"code_ppl_drop >= {T['min_code_ppl_drop']:.2f}",
        lambda: (num(d, "code_ppl_drop") >= T["min_code_ppl_drop"], f"{num(d, 'code_ppl_drop'):.4f}"),
        "CPT should cut code perplexity by at least this much: check the learning rate, the steps and that training "
        "used the code corpus",
    )
    ck.check(
        "s4.forgetting_ratio",
        f"forgetting_ratio > {T['min_forgetting_ratio']}",
        lambda: (num(d, "forgetting_ratio") > T["min_forgetting_ratio"], f"{num(d, 'forgetting_ratio'):.4f}"),
        "pure CPT on code should cost some English; a ratio <= 1 suggests the English evaluation is not the baseline's",
    )
    _check_study(ck, d, T, s3)
    return ck


def _check_study(ck: Report, d: dict, T: dict, s3: dict | None = None) -> None:
    """The trade-off study: every variant, honest endpoints, frozen LoRA base, real replay shares,
    and a recommendation that follows from the numbers."""

    def variants() -> list[dict]:
        vs = get(d, "study.variants")
        if not isinstance(vs, list) or not all(isinstance(v, dict) for v in vs):
            raise Missing("'study.variants' should be a list of variants")
        return vs

    def of(choice: str) -> list[dict]:
        return [v for v in variants() if v.get("choice") == choice]

    def complete():
        alphas = sorted(num(v, "alpha") for v in of("interpolation"))
        have = {c: len(of(c)) for c in ("pure_cpt", "replay", "lora", "interpolation")}
        ok = (
            have["pure_cpt"] == 1
            and have["replay"] >= 3
            and have["lora"] >= 1
            and len(alphas) >= 3
            and alphas[0] == 0
            and alphas[-1] == 1
        )
        return ok, f"{have}, alphas {alphas}"

    ck.check(
        "s4.study_variants",
        "pure CPT, >= 3 replay fractions, LoRA, and an interpolation grid from alpha 0 to 1",
        complete,
        "run the trade-off study cell (cptlab.lab.study.run_study) after the headline numbers",
    )

    def raw_consistent():
        b_code, b_gen = num(d, "baseline_code_ppl"), num(d, "baseline_general_ppl")
        for v in variants():
            name = v.get("name")
            cp = math.exp(num(v, "code_nll_sum") / num(v, "code_tokens"))
            gp = math.exp(num(v, "general_nll_sum") / num(v, "general_tokens"))
            if not (
                close(cp, num(v, "code_ppl"), T["rel_tol"])
                and close(gp, num(v, "general_ppl"), T["rel_tol"])
                and close(num(v, "code_ppl_drop"), 1 - cp / b_code, T["rel_tol"])
                and close(num(v, "forgetting_ratio"), gp / b_gen, T["rel_tol"])
            ):
                return False, f"{name}: its perplexities, drop or ratio do not follow from its raw sums"
            if num(v, "code_tokens") != num(d, "code.tokens") or num(v, "general_tokens") != num(d, "general.tokens"):
                return False, f"{name}: scored a different number of tokens than the headline numbers"
        return True, f"{len(variants())} variants consistent"

    ck.check(
        "s4.study_from_raw",
        "every variant's numbers recomputed from its nll sums, on the headline tokens",
        raw_consistent,
        "every variant must be scored with the same protocol and tokens; do not edit the study by hand",
    )

    def endpoints():
        grid = {num(v, "alpha"): v for v in of("interpolation")}
        a0, a1 = grid[0.0], grid[1.0]
        ok = (
            close(num(a0, "code_ppl"), num(d, "baseline_code_ppl"), 1e-3)
            and close(num(a0, "general_ppl"), num(d, "baseline_general_ppl"), 1e-3)
            and close(num(a1, "code_ppl"), num(d, "adapted_code_ppl"), 1e-3)
            and close(num(a1, "general_ppl"), num(d, "adapted_general_ppl"), 1e-3)
        )
        return ok, (
            f"alpha 0: {num(a0, 'code_ppl'):.5g}/{num(a0, 'general_ppl'):.5g} vs base "
            f"{num(d, 'baseline_code_ppl'):.5g}/"
            f"{num(d, 'baseline_general_ppl'):.5g}; alpha 1: {num(a1, 'code_ppl'):.5g}/{num(a1, 'general_ppl'):.5g} "
            "vs adapted "
            f"{num(d, 'adapted_code_ppl'):.5g}/{num(d, 'adapted_general_ppl'):.5g}"
        )

    ck.check(
        "s4.interp_endpoints",
        "alpha 0 reproduces the base model and alpha 1 the CPT model (1e-3 relative)",
        endpoints,
        "interpolate (1 - alpha) * base + alpha * cpt parameter by parameter, from the saved base and adapted folders",
    )

    def lora_frozen():
        for v in of("lora"):
            if get(v, "base_sha256_before") != get(v, "base_sha256_after"):
                return False, f"{v.get('name')}: base weights changed during LoRA training"
            if not 0 < num(v, "trainable_params") < num(v, "total_params"):
                return False, f"{v.get('name')}: trainable {num(v, 'trainable_params')} of {num(v, 'total_params')}"
        return (
            bool(of("lora")),
            f"base hashes equal; trainable {int(num(of('lora')[0], 'trainable_params')):,} of "
            f"{int(num(of('lora')[0], 'total_params')):,}",
        )

    ck.check(
        "s4.lora_base_frozen",
        "LoRA left every base tensor bit-identical (sha256 before = after)",
        lora_frozen,
        "train only the adapters: get_peft_model freezes the base; do not merge before hashing",
    )

    def replay_share():
        for v in of("replay"):
            per_step = get(v, "replay_windows_per_step")
            windows = num(v, "windows")
            realised = sum(per_step) / windows
            if abs(realised - num(v, "replay_fraction")) > 1.0 / windows + 1e-9 or not close(
                realised, num(v, "replay_fraction_realised"), 1e-9
            ):
                return False, f"{v.get('name')}: held {realised:.4f} replay, asked {num(v, 'replay_fraction')}"
        return bool(of("replay")), ", ".join(
            f"{v.get('name')}: {num(v, 'replay_fraction_realised'):.4f}" for v in of("replay")
        )

    ck.check(
        "s4.replay_share",
        "each replay run's batches really held the stated share of English windows",
        replay_share,
        "draw round(share x windows) replay windows over the run, spread across steps",
    )

    def recommendation():
        floor = num(d, "study.retention_floor")
        under = [v for v in variants() if num(v, "forgetting_ratio") <= floor]
        want = (
            max(under, key=lambda v: num(v, "code_ppl_drop"))
            if under
            else min(variants(), key=lambda v: num(v, "forgetting_ratio"))
        )
        got = get(d, "study.recommendation.name")
        return got == want.get("name"), f"recommended {got}; the numbers give {want.get('name')} (floor {floor})"

    ck.check(
        "s4.recommendation",
        "the recommendation is the largest code gain under the retention floor",
        recommendation,
        "recompute the recommendation from the variants; do not pick it by hand",
    )

    def study_intervals():
        curve = opt(s3, "curve")
        first = curve[0] if isinstance(curve, list) and curve and isinstance(curve[0], dict) else {}
        # step 1's sums, or (a step 1 from before the intervals) the CPT run's step-0 point
        base = {n: opt(d, f"baseline.{n}.units") or first.get(f"{n}_units") for n in ("code", "general")}
        if not base["code"]:
            raise Missing("no per-document sums of the baseline in 'baseline': re-run step 3, then step 4")
        for v in variants():
            wrong = _paired_intervals(v, base["code"], base["general"], T)
            if wrong:
                return False, f"{v.get('name')}: {wrong}"
        return True, f"{len(variants())} variants, each interval recomputed and holding its estimate"

    ck.check(
        "s4.study_intervals",
        "every variant's code drop and forgetting ratio with its paired 95% interval (recomputed)",
        study_intervals,
        "re-run the study (cptlab.lab.study.run_study): its intervals come from the per-document sums",
    )
