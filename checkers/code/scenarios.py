"""Question 4.6: production choices for four scenarios, and the scenario answer key beside its check."""

from __future__ import annotations

import math
from typing import Callable

from checkers.code.harness import Exercise
from checkers.code.tradeoff import _random_variants
from checkers.core.report import Report
from checkers.core.safe_files import Unsafe, read_json
from cptlab.core.results import STEP_FILES
from cptlab.lab.study import recommend

SCENARIOS = {
    "code_only_assistant": "a code-only assistant: English does not matter",
    "english_within_floor": "English must stay within the retention floor",
    "per_customer_adapters": "many per-customer adapters served on one shared base",
    "no_training_budget": "no budget for another training run",
}


def _scenario_answers(variants: list[dict], floor: float) -> dict[str, set[str]]:
    by = {c: {v["name"] for v in variants if v["choice"] == c} for c in ("pure_cpt", "replay", "lora", "interpolation")}
    return {
        "code_only_assistant": {max(variants, key=lambda v: v["code_ppl_drop"])["name"]},
        "english_within_floor": {recommend(variants, floor)["name"]},
        "per_customer_adapters": by["lora"],
        "no_training_budget": by["interpolation"],
    }


def judge(ex: Exercise, label: str, variants: list[dict], floor: float) -> None:
    got = ex.call([dict(v) for v in variants], floor)
    want = _scenario_answers(variants, floor)
    short = "a" if label == "a random study" else "b"
    if not ex.row(
        f"returns.{short}",
        isinstance(got, dict),
        f"a dict with the keys {sorted(SCENARIOS)} ({label})",
        type(got).__name__,
        "return a dict: scenario -> variant name",
    ):
        return
    for key, what in SCENARIOS.items():
        ex.row(
            f"{key}.{short}",
            got.get(key) in want[key],
            f"one of {sorted(want[key])} ({label})",
            repr(got.get(key))[:40],
            f"{what}: pick from the measured variants by the numbers (see the markdown above)",
        )


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
    """``production_choices(variants, floor) -> {scenario: variant name}``, on a random study and
    on the learner's own (``step4_tradeoff.json`` in ``run_dir``)."""
    ex = Exercise("4.6", fn, seed)

    def body():
        floor = float(ex.rng.uniform(1.02, 1.1))
        judge(ex, "a random study", _random_variants(ex.rng, floor), floor)
        if run_dir is None:
            judge(ex, "a second random study", _random_variants(ex.rng, floor), floor)
            return
        study, why = own_study(run_dir)
        if ex.row(
            "own_study",
            study is not None,
            "your study in step4_tradeoff.json",
            why,
            "run the study cell above first: the decisions are checked against your own numbers",
        ):
            judge(ex, "your study", study["variants"], study["retention_floor"])

    return ex.run(body)
