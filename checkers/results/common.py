"""What every step's results check shares: reading a results file as plain JSON (older versions
adapted), typed access to its values, the report's start, and perplexities and intervals
recomputed from raw sums.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from checkers.core.questions import RESULTS_QUESTION
from checkers.core.report import Report
from checkers.core.safe_files import Unsafe, read_json
from checkers.core.thresholds import UnknownPreset, thresholds_for
from cptlab.core.results import STEP_FILES, STEP_NOTEBOOKS
from cptlab.core.results import STEP_TITLES as TITLES
from cptlab.core.uncertainty import drop_interval, ratio_interval

NOTEBOOKS = {k: f"notebooks/{v}" for k, v in STEP_NOTEBOOKS.items()}


class Missing(Exception):
    """A value a check needs is absent or of the wrong kind."""


def load(run_dir: str | Path, step: int) -> tuple[dict | None, str]:
    """A step's results as plain JSON, read only if it is a regular file inside the folder."""
    name = STEP_FILES[step]
    try:
        data = read_json(run_dir, name)
    except FileNotFoundError:
        return None, f"{name} not found in {run_dir}"
    except Unsafe as exc:
        return None, f"refused: {exc}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{name} is not valid JSON ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return None, f"{name} holds a {type(data).__name__}, not a JSON object"
    return adapt(step, data), "valid JSON object"


OLDER = "_older"  # set by ``adapt`` at load time, whatever the file holds under that name


def adapt(step: int, data: dict) -> dict:
    """Results written by an older cptlab, read as today's: what such a file lacks is named here,
    once, and a check asks ``older(d, what)`` instead of guessing from the file's shape.

    - ``no_intervals`` (step 1): no per-document sums, so no intervals; the token bar of that time.
    - ``short_curve`` (step 3): the forgetting curve scored fewer tokens than the headline."""
    lacks = []
    if step == 1 and any(not isinstance(data.get(n), dict) or "units" not in data[n] for n in ("code", "general")):
        lacks.append("no_intervals")
    if step == 3:
        proto, curve = data.get("curve_protocol"), data.get("curve")
        last = curve[-1] if isinstance(curve, list) and curve else None
        if (
            not isinstance(proto, dict)
            or "tokens" not in proto
            or (isinstance(last, dict) and "code_units" not in last)
        ):
            lacks.append("short_curve")
    return {**data, OLDER: lacks}


def older(d: dict | None, what: str) -> bool:
    return isinstance(d, dict) and what in d.get(OLDER, ())


def get(d: Any, dotted: str) -> Any:
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise Missing(f"'{dotted}' is missing")
        cur = cur[part]
    return cur


def opt(d: Any, dotted: str) -> Any:
    """``get``, or None where the value is missing."""
    try:
        return get(d, dotted)
    except Missing:
        return None


def num(d: Any, dotted: str) -> float:
    v = get(d, dotted)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Missing(f"'{dotted}' should be a number, found {v!r}")
    return float(v)


def close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def explainer(step: int) -> Callable[[Exception], tuple[str, str | None]]:
    """How a step's check whose value is missing, refused or malformed reads, and what to do."""
    rerun = f"re-run {NOTEBOOKS[step]} (or `cptlab run`) to rewrite {STEP_FILES[step]}"

    def explain(exc: Exception) -> tuple[str, str | None]:
        if isinstance(exc, Missing):
            return str(exc), f"{STEP_FILES[step]} is incomplete: {rerun}"
        if isinstance(exc, Unsafe):
            return f"refused: {exc}", rerun
        return f"unreadable value ({type(exc).__name__}: {exc})"[:300], rerun

    return explain


def _start(run_dir, step: int, expected: str | None = None) -> tuple[Report, dict | None, dict]:
    """The step's report (its checks go in with ``ck.check``), results and thresholds. ``expected``:
    the instructor's preset, whose thresholds apply whatever preset the results file names."""
    s1, _ = load(run_dir, 1) if step != 1 else (None, "")
    data, why = load(run_dir, step)
    preset = None
    for src in (s1, data):
        if isinstance(src, dict) and isinstance(src.get("preset"), str):
            preset = src["preset"]
            break
    ck = Report(step, TITLES[step], str(run_dir), preset, question=RESULTS_QUESTION[step], explain=explainer(step))
    ck.check(
        f"s{step}.results",
        f"{STEP_FILES[step]} in the run folder",
        lambda: (data is not None, why),
        f"run {NOTEBOOKS[step]} first; it writes {STEP_FILES[step]}",
    )
    if data is not None and step != 1:
        ck.check(
            f"s{step}.same_run",
            f"the same run (run_id and preset) as {STEP_FILES[1]}",
            lambda: (
                s1 is not None
                and get(data, "run_id") == get(s1, "run_id")
                and get(data, "preset") == get(s1, "preset"),
                f"run_id {str(get(data, 'run_id'))[:8]}.. preset {get(data, 'preset')} vs step 1 "
                + (f"{str(get(s1, 'run_id'))[:8]}.. preset {get(s1, 'preset')}" if s1 else "missing"),
            ),
            "results from another run or preset are mixed into this folder: re-run the steps in order in one run "
            "folder",
        )
    if expected is not None and data is not None:
        ck.check(
            f"s{step}.preset",
            f"results made with the {expected!r} preset",
            lambda: (preset == expected, f"made with {preset!r}, graded for {expected!r}"),
            f'run the lab with --preset {expected} (PRESET = "{expected}" in the parameters cell): another preset\'s '
            "numbers do not count",
        )
        preset = expected
    try:
        T = thresholds_for(preset)
    except UnknownPreset as exc:
        why = str(exc).strip("'\"")
        if data is not None:
            ck.check(
                f"s{step}.preset",
                "a preset the lab knows (its thresholds apply)",
                lambda: (False, why),
                "re-run the step with --preset tiny, gpt2 or smoke",
            )
        return ck, None, {}
    return ck, data, T


def _ppl_from_raw(ck: Report, cid: str, d: dict, reported: str, raw: str, T: dict) -> None:
    def body():
        p, nll, n = num(d, reported), num(d, f"{raw}.nll_sum"), num(d, f"{raw}.tokens")
        recomputed = math.exp(nll / n)
        return close(p, recomputed, T["rel_tol"]), f"{reported}={p:.6g}, exp(nll_sum/tokens)={recomputed:.6g}"

    ck.check(
        cid,
        f"{reported} = exp({raw}.nll_sum / {raw}.tokens)",
        body,
        "perplexity is exp(total NLL / scored tokens); the reported number must come from its own raw sums",
    )


# An interval comes from the reference's per-document sums; the number it brackets may come from the
# learner's perplexity function (step 1), which rounds differently in its last digits.
HOLD_TOL = 1e-4


def holds(low: float, estimate: float, high: float) -> bool:
    """``low <= estimate <= high``, up to the rounding of two implementations."""
    tol = HOLD_TOL * max(1.0, abs(estimate))
    return low - tol <= estimate <= high + tol


def _units(d: dict, dotted: str, nll_sum: float, tokens: float, T: dict) -> dict:
    """Per-document sums that add up to the totals they break down."""
    u = get(d, dotted)
    if not isinstance(u, dict) or not isinstance(u.get("nll"), list) or not isinstance(u.get("tokens"), list):
        raise Missing(f"'{dotted}' should hold per-document 'nll' and 'tokens' lists")
    total = sum(float(x) for x in u["nll"])
    if sum(int(x) for x in u["tokens"]) != tokens:
        raise ValueError(f"'{dotted}' does not add up to the set's {int(tokens)} tokens")
    if (
        "nll_sum" in u
    ):  # the reference's sums beside a learner's perplexity: equal up to the two implementations' rounding
        if not close(total, float(u["nll_sum"]), T["rel_tol"]) or not close(float(u["nll_sum"]), nll_sum, 1e-3):
            raise ValueError(f"'{dotted}' does not add up to the reference's nll_sum, or that is not the reported one")
    elif not close(total, nll_sum, T["rel_tol"]):
        raise ValueError(f"'{dotted}' does not add up to the set's nll_sum")
    return u


def _interval(
    ck: Report, cid: str, d: dict, estimate: str, dotted: str, recompute: Callable[[], dict], T: dict
) -> None:
    """A reported interval: recomputed from the per-document sums, and holding its point estimate."""

    def body():
        got, want, est = get(d, dotted), recompute(), num(d, estimate)
        if not isinstance(got, dict):
            raise Missing(f"'{dotted}' should hold the 95% interval of {estimate}")
        lo, hi = num(got, "low"), num(got, "high")
        if not (close(lo, want["low"], T["rel_tol"]) and close(hi, want["high"], T["rel_tol"])):
            return (
                False,
                f"[{lo:.6g}, {hi:.6g}] reported, [{want['low']:.6g}, {want['high']:.6g}] recomputed from the "
                "per-document sums",
            )
        return holds(lo, est, hi), f"{estimate}={est:.6g} in [{lo:.6g}, {hi:.6g}]"

    ck.check(
        cid,
        f"{dotted}: the 95% interval recomputed from the per-document sums, holding {estimate}",
        body,
        "intervals come from cptlab.core.uncertainty on the stored per-document sums; an interval that does not hold "
        "its "
        "own estimate, or that the sums do not give, was edited or mixed from another run: re-run the step",
    )


def _paired_intervals(rec: dict, code_base: dict, general_base: dict, T: dict) -> str | None:
    """What is wrong with a model record's code-drop and forgetting intervals (a curve point, a study
    variant) against the baseline's per-document sums, or None."""
    for key, fn, base, units in (
        ("code_ppl_drop", drop_interval, code_base, "code_units"),
        ("forgetting_ratio", ratio_interval, general_base, "general_units"),
    ):
        ci, want = get(rec, f"{key}_ci"), fn(base, get(rec, units))
        if not (
            isinstance(ci, dict)
            and close(num(ci, "low"), want["low"], T["rel_tol"])
            and close(num(ci, "high"), want["high"], T["rel_tol"])
        ):
            return f"{key}_ci is not the interval its per-document sums give"
        if not holds(num(ci, "low"), num(rec, key), num(ci, "high")):
            return f"{key}={num(rec, key):.6g} outside [{num(ci, 'low'):.6g}, {num(ci, 'high'):.6g}]"
    return None
