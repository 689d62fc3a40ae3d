"""Question 4.6: production choices for four scenarios, and the scenario answer key beside its check."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from checkers.code.harness import Exercise
from checkers.core.report import Report
from checkers.core.safe_files import Unsafe, read_json
from cptlab.core.results import STEP_FILES
from cptlab.lab.study import recommend

SCENARIOS = {
    "code_only_assistant": "a code-only assistant: English does not matter",
    "english_within_floor": "English must stay within the retention floor",
    "per_customer_adapters": "many per-customer adapters served on one shared base",
    "no_training_budget": "English within the floor, no budget for another training run",
}
# The kinds of variant each scenario may pick from (None: any).
ALLOWED = {
    "code_only_assistant": None,
    "english_within_floor": None,
    "per_customer_adapters": {"lora"},
    "no_training_budget": {"interpolation"},
}
RULE = {
    "code_only_assistant": "the largest code gain of all",
    "english_within_floor": "choose_variant's rule over every variant",
    "per_customer_adapters": "the largest code gain among the LoRA variants",
    "no_training_budget": "choose_variant's rule over the interpolation variants",
}


def _same(variants: list[dict], pick: dict) -> set[str]:
    """The names of every variant with the picked one's numbers (interpolation at 1 is the CPT run)."""
    return {
        v["name"]
        for v in variants
        if v["code_ppl_drop"] == pick["code_ppl_drop"] and v["forgetting_ratio"] == pick["forgetting_ratio"]
    }


def _scenario_answers(variants: list[dict], floor: float) -> dict[str, set[str]]:
    def allowed(key):
        kinds = ALLOWED[key]
        return [v for v in variants if kinds is None or v["choice"] in kinds]

    def gain(vs):
        return max(vs, key=lambda v: v["code_ppl_drop"])

    def within(vs):
        return next(v for v in vs if v["name"] == recommend(vs, floor)["name"])

    out = {}
    for key, rule in (
        ("code_only_assistant", gain),
        ("english_within_floor", within),
        ("per_customer_adapters", gain),
        ("no_training_budget", within),
    ):
        vs = allowed(key)
        out[key] = _same(vs, rule(vs)) if vs else {None}
    return out


def physical_study(rng: np.random.Generator, floor: float) -> list[dict]:
    """A study that could have been measured: two CPT seeds; interpolation from the base (alpha 0: no
    gain, ratio 1) to the first seed's run (alpha 1: its very numbers), gains coming early and
    forgetting late; replay gaining less and forgetting less as its English share grows; two LoRA ranks
    gaining less than CPT. Every kind has variants on both sides of the floor, in a shuffled order."""
    out = []
    cpt = []
    seeds = sorted(int(x) for x in rng.choice([1, 2, 3, 4], 2, replace=False))
    for k, over in zip(seeds, rng.permutation([True, False])):
        d = float(rng.uniform(0.3, 0.5))
        low = 1.0 + 0.5 * (floor - 1)
        r = float(rng.uniform(floor + 0.01, floor + 0.08) if over else rng.uniform(low, floor - 1e-3))
        cpt.append((d, r))
        out.append({"name": f"pure CPT (seed {k})", "choice": "pure_cpt", "code_ppl_drop": d, "forgetting_ratio": r})
    (d1, r1) = max(cpt, key=lambda c: c[1])  # the run that crossed the floor is the one interpolated
    q, p = float(rng.uniform(1.5, 3.0)), float(rng.uniform(1.5, 3.0))
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        d = d1 * (1 - (1 - a) ** q) if a < 1 else d1
        r = 1 + (r1 - 1) * a**p if a < 1 else r1
        out.append({"name": f"interp a={a:g}", "choice": "interpolation", "code_ppl_drop": d, "forgetting_ratio": r})
    shares = (0.05, 0.1, 0.25)
    ratios = sorted(
        [float(rng.uniform(floor + 1e-3, r1)), float(rng.uniform(1.0, r1)), float(rng.uniform(1.0, floor - 1e-3))],
        reverse=True,
    )
    for f, r in zip(shares, ratios):
        d = d1 * (1 - f * float(rng.uniform(0.5, 1.5)))
        out.append({"name": f"replay {f:.0%}", "choice": "replay", "code_ppl_drop": d, "forgetting_ratio": r})
    lora = sorted([float(rng.uniform(0.05, 0.6 * d1)) for _ in range(2)])
    ranks = rng.permutation([8, 64])  # which rank gains more is the study's to say
    for rank, d, r in zip(ranks, lora, (float(rng.uniform(1.0, floor - 1e-3)), float(rng.uniform(floor + 1e-3, r1)))):
        out.append({"name": f"LoRA r={rank}", "choice": "lora", "code_ppl_drop": d, "forgetting_ratio": r})
    return [out[i] for i in rng.permutation(len(out))]


def two_studies(rng: np.random.Generator) -> list[tuple[list[dict], float]]:
    """Two random studies whose every scenario has other answers, in other places: a choice written
    by hand, by label or by position fails one of them."""
    floor_a = float(rng.uniform(1.02, 1.1))
    a = physical_study(rng, floor_a)
    key_a = _scenario_answers(a, floor_a)
    where_a = {k: {i for i, v in enumerate(a) if v["name"] in names} for k, names in key_a.items()}
    for _ in range(5000):  # about one draw in 25 gives other answers to all four
        floor_b = float(rng.uniform(1.02, 1.1))
        b = physical_study(rng, floor_b)
        key_b = _scenario_answers(b, floor_b)
        if all(not key_a[k] & key_b[k] for k in SCENARIOS):
            break
    else:
        raise RuntimeError("no second study with other answers")
    for _ in range(5000):  # then an order that puts them elsewhere too
        b = [b[i] for i in rng.permutation(len(b))]
        if all(not where_a[k] & {i for i, v in enumerate(b) if v["name"] in key_b[k]} for k in SCENARIOS):
            return [(a, floor_a), (b, floor_b)]
    raise RuntimeError("no order of the second study that moves every answer")


def judge(ex: Exercise, short: str, label: str, variants: list[dict], floor: float) -> None:
    got = ex.call([dict(v) for v in variants], floor)
    want = _scenario_answers(variants, floor)
    if not ex.row(
        f"returns.{short}",
        isinstance(got, dict),
        f"a dict with the keys {sorted(SCENARIOS)} ({label})",
        type(got).__name__,
        "return a dict: scenario -> variant name",
    ):
        return
    by_name = {v["name"]: v for v in variants}
    for key, what in SCENARIOS.items():
        name = got.get(key)
        picked = by_name.get(name) if isinstance(name, str) else None
        if picked is None:
            hint = f"{what}: return the name of one of the study's variants"
        elif ALLOWED[key] is not None and picked["choice"] not in ALLOWED[key]:
            hint = (
                f"mistake: a {picked['choice']} variant. {what}: only {' or '.join(sorted(ALLOWED[key]))} variants "
                "fit this scenario"
            )
        else:
            hint = (
                f"mistake: a variant of the right kind, but not the one the numbers pick ({RULE[key]}). A name "
                "written by hand, or taken by its place in the list, is right on one study only"
            )
        ex.row(f"{key}.{short}", name in want[key], f"one of {sorted(want[key])} ({label})", repr(name)[:40], hint)


def own_study(run_dir) -> tuple[dict | None, str]:
    """The learner's study from step 4's results, read as untrusted data (a regular file inside the run
    folder, size-capped) and only if every variant has the fields the decisions need."""
    try:
        data = read_json(run_dir, STEP_FILES[4])
    except FileNotFoundError:
        return None, "missing"
    except (Unsafe, OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"[:200]
    study = data.get("study") if isinstance(data, dict) else None
    try:
        variants = study["variants"]
        ok = (
            isinstance(float(study["retention_floor"]), float)
            and bool(variants)
            and all(
                isinstance(v["name"], str)
                and isinstance(v["choice"], str)
                and all(
                    isinstance(v[k], (int, float)) and not isinstance(v[k], bool) and math.isfinite(v[k])
                    for k in ("code_ppl_drop", "forgetting_ratio")
                )
                for v in variants
            )
        )
    except (TypeError, KeyError, ValueError):
        ok = False
    return (study, "present") if ok else (None, "missing or malformed")


def check_production_choices(fn: Callable, run_dir: str | None = None, seed: int | None = None) -> Report:
    """``production_choices(variants, floor) -> {scenario: variant name}``, on two random studies
    (the points) and on the learner's own (``step4_tradeoff.json`` in ``run_dir``, shown)."""
    ex = Exercise("4.6", fn, seed)

    def body():
        for short, (variants, floor) in zip("ab", two_studies(ex.rng)):
            judge(ex, short, f"random study {short}", variants, floor)
        if run_dir is None:
            return
        study, why = own_study(run_dir)
        if ex.row(
            "own_study",
            study is not None,
            "your study in step4_tradeoff.json",
            why,
            "run the study cell above first: the decisions are shown on your own numbers",
        ):
            judge(ex, "own", "your study", study["variants"], study["retention_floor"])

    return ex.run(body)
