"""check_step1 .. check_step4: every check of a step, recomputing derived values from raw ones.

Never raises on missing or malformed results: a check fails and says what is missing. Executes
nothing from the run folder; results are read as plain JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from checkers.core.questions import QUESTIONS, RESULTS_QUESTION, RESULTS_WEIGHTS
from checkers.core.report import Check, Report
from checkers.core.safe_files import Unsafe, inside, read_json, safetensors_header
from checkers.core.thresholds import BEFORE_INTERVALS, UnknownPreset, thresholds_for
from cptlab.core.results import STEP_FILES, STEP_NOTEBOOKS
from cptlab.core.results import STEP_TITLES as TITLES
from cptlab.core.uncertainty import drop_interval, ppl_interval, ratio_interval
from cptlab.notebook.fallback import none_written

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


def _check_step1(run_dir: str | Path, preset: str | None = None) -> Report:
    ck, d, T = _start(run_dir, 1, preset)
    if d is None:
        return ck
    for name in ("code", "general"):
        key = f"baseline_{name}_ppl"
        ck.check(
            f"s1.{name}_ppl_finite",
            "a finite perplexity above 1",
            lambda key=key: ((lambda v: math.isfinite(v) and v > 1)(num(d, key)), num(d, key)),
            "perplexity is at least 1 by definition; a NaN or inf means the evaluation broke: check the model and the "
            "text",
        )
        _ppl_from_raw(ck, f"s1.{name}_ppl_from_raw", d, key, name, T)
        legacy = older(d, "no_intervals")
        bar = (
            {**T, **BEFORE_INTERVALS.get(str(d.get("preset")), {})}["min_eval_tokens"]
            if legacy
            else T["min_eval_tokens"]
        )
        ck.check(
            f"s1.{name}_tokens",
            f">= {bar:,} scored tokens",
            lambda name=name, bar=bar: (num(d, f"{name}.tokens") >= bar, int(num(d, f"{name}.tokens"))),
            "too few tokens make a noisy perplexity: raise eval_max_tokens or use a bigger evaluation set",
        )
        if not legacy:
            _interval(
                ck,
                f"s1.{name}_interval",
                d,
                key,
                f"{name}.interval",
                lambda name=name: ppl_interval(
                    _units(d, f"{name}.units", num(d, f"{name}.nll_sum"), num(d, f"{name}.tokens"), T)
                ),
                T,
            )

    def same_protocol():
        pc, pg = get(d, "code.protocol"), get(d, "general.protocol")
        keys = ("block_size", "stride", "max_tokens")
        a = {k: get(pc, k) for k in keys}
        b = {k: get(pg, k) for k in keys}
        block = get(d, "config.block_size")
        return a == b and a["block_size"] == block == T["block_size"], f"code {a}, English {b}"

    ck.check(
        "s1.same_protocol",
        f"code and English scored with one protocol, block_size {T['block_size']}",
        same_protocol,
        "compare like with like: evaluate both sets with the same block size, stride and token cap",
    )
    return ck


def _check_step2(run_dir: str | Path, preset: str | None = None) -> Report:
    ck, d, T = _start(run_dir, 2, preset)
    if d is None:
        return ck
    ck.check(
        "s2.eos_count",
        "one EOS per document (eos_count == n_docs)",
        lambda: (
            num(d, "eos_count") == num(d, "n_docs"),
            f"eos_count={int(num(d, 'eos_count'))}, n_docs={int(num(d, 'n_docs'))}",
        ),
        "append tokenizer.eos_token_id after every document before joining them into one stream",
    )
    ck.check(
        "s2.sizes_add_up",
        "train + val = all tokens and all documents",
        lambda: (
            num(d, "train_tokens") + num(d, "val_tokens") == num(d, "n_tokens")
            and num(d, "train_docs") + num(d, "val_docs") == num(d, "n_docs"),
            f"tokens {int(num(d, 'train_tokens'))}+{int(num(d, 'val_tokens'))} of {int(num(d, 'n_tokens'))}, "
            f"docs {int(num(d, 'train_docs'))}+{int(num(d, 'val_docs'))} of {int(num(d, 'n_docs'))}",
        ),
        "every document goes to exactly one side of the split",
    )

    def split():
        frac = num(d, "val_tokens") / num(d, "n_tokens")
        lo, hi = T["val_fraction"], T["val_fraction"] + T["split_tolerance"]
        return lo <= frac <= hi, f"val fraction {frac:.4f}"

    ck.check(
        "s2.split_98_2",
        f"validation share in [{T['val_fraction']}, {T['val_fraction'] + T['split_tolerance']:.3f}] "
        "(whole documents, so at or a little above 2%)",
        split,
        "take whole documents for validation until they hold 2% of the tokens",
    )
    ck.check(
        "s2.split_tokens",
        f"both splits >= {T['min_split_tokens']:,} tokens",
        lambda: (
            min(num(d, "train_tokens"), num(d, "val_tokens")) >= T["min_split_tokens"],
            f"train {int(num(d, 'train_tokens')):,}, val {int(num(d, 'val_tokens')):,}",
        ),
        "a 2% validation split is only trustworthy when it holds tens of thousands of tokens: add documents",
    )

    def blocks():
        s1, _ = load(run_dir, 1)
        block = num(d, "block_size")
        expect_block = num(s1, "config.block_size") if s1 else T["block_size"]
        n_blocks = num(d, "n_blocks")
        return block == expect_block and n_blocks == num(
            d, "train_tokens"
        ) // block, f"block_size={int(block)}, n_blocks={int(n_blocks)}"

    ck.check(
        "s2.blocks",
        f"windows of block_size {T['block_size']}; n_blocks = train_tokens // block_size",
        blocks,
        "reshape the training stream to (-1, block_size) after dropping the tail",
    )
    return ck


def schedule(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up to the peak at ``warmup``, then cosine down to ``min_ratio`` of the peak at
    ``total`` (recomputed here, independently of the training code)."""
    if step < warmup:
        return step / max(1, warmup)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
    return min_ratio + (1.0 - min_ratio) * cosine


def loss_trend(losses: list[float]) -> tuple[float, float, float]:
    """A least-squares line through every step's loss: how far it falls over the run, the residuals'
    standard deviation (one step's noise) and the slope's t statistic."""
    n = len(losses)
    if n < 3 or not all(math.isfinite(x) for x in losses):
        return 0.0, float("inf"), 0.0
    xs = list(range(n))
    mx, my = sum(xs) / n, sum(losses) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, losses)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, losses)]
    noise = math.sqrt(sum(r * r for r in resid) / (n - 2))
    se = noise / math.sqrt(sxx) if noise > 0 else 0.0
    t = slope / se if se > 0 else (-math.inf if slope < 0 else 0.0)
    return -slope * (n - 1), noise, t


def weight_change(run_dir: str | Path, rel: str, preset: str) -> float:
    """Relative L2 change of the adapted model's weights from the preset's base model (the grader
    finds the base itself; the folder's own claim of its base is not trusted)."""
    import torch
    from safetensors import safe_open

    from cptlab.core.config import get_config
    from cptlab.model.measure import resolve_base_model

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                out.update({k: fh.get_tensor(k).float() for k in fh.keys()})
        return out

    folder = Path(run_dir) / str(rel)
    for f in folder.glob("*.safetensors"):
        inside(run_dir, Path(str(rel)) / f.name)
        safetensors_header(run_dir, Path(str(rel)) / f.name)
    base_id = resolve_base_model(get_config(preset), progress=False)
    base_dir = Path(base_id)
    if not base_dir.is_dir():
        from huggingface_hub import snapshot_download

        base_dir = Path(snapshot_download(base_id, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
    a, b = tensors(folder), tensors(base_dir)
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not common:
        raise Missing(f"no tensor of {rel} matches the base model's names and shapes")
    diff = math.sqrt(sum(float(torch.sum((a[k] - b[k]) ** 2)) for k in common))
    norm = math.sqrt(sum(float(torch.sum(b[k] ** 2)) for k in common))
    return diff / max(norm, 1e-12)


def _check_step3(run_dir: str | Path, preset: str | None = None) -> Report:
    ck, d, T = _start(run_dir, 3, preset)
    if d is None:
        return ck

    def rows() -> list[dict]:
        log = get(d, "log")
        if not isinstance(log, list) or not log or not all(isinstance(r, dict) for r in log):
            raise Missing("'log' should be a non-empty list of step rows")
        return log

    def stopped_at() -> int | None:
        at = (d.get("floor") or {}).get("stopped_at_step") if isinstance(d.get("floor"), dict) else None
        return at if isinstance(at, int) and not isinstance(at, bool) and 0 < at < T["max_steps"] else None

    def steps():
        last = stopped_at() or T["max_steps"]
        why = f" (stopped at the retention floor, step {last})" if stopped_at() else ""
        return [num(r, "step") for r in rows()] == list(range(1, last + 1)), f"{len(rows())} logged steps{why}"

    ck.check(
        "s3.steps",
        f"{T['max_steps']} optimizer steps, numbered 1..{T['max_steps']} (or up to a retention-floor stop)",
        steps,
        f"train for exactly max_steps={T['max_steps']} and log every step",
    )
    ck.check(
        "s3.hparams",
        f"cpt_lr {T['cpt_lr']}, grad_clip {T['grad_clip']}, block_size {T['block_size']}",
        lambda: (
            (num(d, "hparams.cpt_lr"), num(d, "hparams.grad_clip"), num(d, "hparams.block_size"))
            == (T["cpt_lr"], T["grad_clip"], T["block_size"]),
            f"cpt_lr {num(d, 'hparams.cpt_lr')}, grad_clip {num(d, 'hparams.grad_clip')}, block_size "
            f"{int(num(d, 'hparams.block_size'))}",
        ),
        "use the lab's recipe: AdamW lr 5e-5, clip 1.0, 256-token blocks",
    )

    def lr_schedule():
        lr0, warm, total = (
            num(d, "hparams.cpt_lr"),
            int(num(d, "hparams.warmup_steps")),
            int(num(d, "hparams.max_steps")),
        )
        for r in rows():
            step = int(num(r, "step"))
            want = lr0 * schedule(step, warm, total, float(opt(d, "hparams.min_lr_ratio") or 0.0))
            got = num(r, "lr")
            if abs(got - want) > 1e-6 * lr0:
                return False, f"step {step}: lr {got:.6g}, schedule says {want:.6g}"
        return True, f"all {len(rows())} steps match"

    ck.check(
        "s3.lr_schedule",
        "every logged lr = cpt_lr x (linear warm-up, then cosine to 0)",
        lr_schedule,
        "set the learning rate from the warm-up + cosine formula before every optimizer step",
    )

    def warmup_peak():
        lrs = [num(r, "lr") for r in rows()]
        peak_step = int(num(rows()[lrs.index(max(lrs))], "step"))
        return peak_step == T["warmup_steps"], f"peak at step {peak_step}"

    ck.check(
        "s3.warmup_peak",
        f"the learning rate peaks at step {T['warmup_steps']}",
        warmup_peak,
        "warm up linearly for warmup_steps=10 so Adam's moment estimates settle before the full rate",
    )

    def cosine():
        lrs = [num(r, "lr") for r in rows()][T["warmup_steps"] :]
        if not lrs:
            return False, f"no step after the recipe's {T['warmup_steps']} warm-up steps"
        mono = all(b <= a + 1e-15 for a, b in zip(lrs, lrs[1:]))
        ends_low = lrs[-1] <= 0.01 * max(lrs) or stopped_at() is not None
        return mono and ends_low, f"non-increasing={mono}, last/peak={lrs[-1] / max(lrs):.3g}"

    ck.check(
        "s3.cosine_decay",
        "after the peak the rate only falls, to about 0 at the last step",
        cosine,
        "decay with a half cosine from the peak to 0 over the remaining steps",
    )

    def clipped():
        norms = [num(r, "grad_norm") for r in rows()]
        return all(
            math.isfinite(x) and x >= 0 for x in norms
        ), f"{len(norms)} finite norms (pre-clip max {max(norms):.3g})"

    ck.check(
        "s3.grad_norms",
        "a finite pre-clipping gradient norm at every step",
        clipped,
        "log clip_grad_norm_'s return value (the norm before clipping) each step",
    )

    def decreased():
        losses = [num(r, "loss") for r in rows()]
        k = max(1, len(losses) // 10)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        return all(
            math.isfinite(x) for x in losses
        ) and last < first, f"first {k} steps {first:.4g}, last {k} steps {last:.4g}"

    ck.check(
        "s3.loss_decreased",
        "mean loss of the last 10% of steps below that of the first 10%",
        decreased,
        "if the loss does not fall, check the learning rate and that the model trains on the code corpus",
    )

    def trend():
        losses = [num(r, "loss") for r in rows()]
        fall, noise, t = loss_trend(losses)
        return t <= -3 and fall > noise, (
            f"the fitted trend falls {fall:.3g} nats over {len(losses)} steps (t = {t:.1f}); "
            f"one step scatters by {noise:.3g} around it"
        )

    ck.check(
        "s3.loss_trend",
        "a loss trend that falls by more than one step's noise, with |t| >= 3 (a line fitted to every step)",
        trend,
        "a loss that only wanders is batch noise: the weights are not being updated (optimizer.step(), the rate)",
    )

    def moved():
        made_with = str(get(d, "preset"))
        if preset is not None and preset != made_with:  # another preset's run is not compared, nor counted
            return False, f"made with {made_with!r}, graded for {preset!r}: not compared with {preset!r}'s base model"
        change = weight_change(run_dir, get(d, "adapted_model"), made_with)
        return change > 1e-6, f"relative change of the weights from the base model: {change:.3g}"

    ck.check(
        "s3.weights_moved",
        "the adapted model's weights differ from the base model's",
        moved,
        "the saved model is the base model: the optimizer never updated it (call optimizer.step() after backward())",
    )

    def spikes():
        losses = [num(r, "loss") for r in rows()]
        limit = T["spike_factor"] * losses[0]
        worst = max(losses[T["warmup_steps"] :] or losses)
        return worst <= limit, f"max loss after warm-up {worst:.4g} (limit {limit:.4g})"

    ck.check(
        "s3.no_loss_spike",
        f"no loss above {T['spike_factor']}x the first step's after warm-up",
        spikes,
        "a spike means the update was too large: lower the learning rate or keep clipping at 1.0",
    )

    s1, _ = load(run_dir, 1)

    def points() -> list[dict]:
        pts = get(d, "curve")
        if not isinstance(pts, list) or len(pts) < 2 or not all(isinstance(p, dict) for p in pts):
            raise Missing("'curve' should list the evaluation points of the run")
        return pts

    def legacy() -> bool:
        return older(d, "short_curve")

    def curve():
        pts = points()
        every = int(num(d, "curve_protocol.every"))
        steps = [int(num(p, "step")) for p in pts]
        last = int(num(rows()[-1], "step"))
        want = sorted({0, *range(every, last + 1, every), last})
        g0 = num(pts[0], "general_ppl") if legacy() or s1 is None else num(s1, "baseline_general_ppl")
        for p in pts:
            if not close(num(p, "forgetting_ratio"), num(p, "general_ppl") / g0, T["rel_tol"]):
                return (
                    False,
                    f"step {int(num(p, 'step'))}: forgetting_ratio does not equal general_ppl / the baseline's",
                )
        return steps == want, f"points at steps {steps[:4]}...{steps[-2:]}"

    ck.check(
        "s3.forgetting_curve",
        "code and English evaluated at step 0, every k steps and at the last step",
        curve,
        "evaluate both sets every curve_every steps during the run (the forgetting curve)",
    )

    def headline_tokens():
        if legacy():
            return False, (
                f"curve scored on {int(num(points()[-1], 'code_tokens')):,} code tokens per point, "
                f"the headline on {int(num(s1, 'code.tokens')) if s1 else '?':,}: made by an older cptlab"
            )
        for p in points():
            if (
                s1 is None
                or num(p, "code_tokens") != num(s1, "code.tokens")
                or num(p, "general_tokens") != num(s1, "general.tokens")
            ):
                return (
                    False,
                    f"step {int(num(p, 'step'))}: {int(num(p, 'code_tokens'))}/{int(num(p, 'general_tokens'))} "
                    f"tokens, step 1 scored {num(s1, 'code.tokens') if s1 else '?'}",
                )
        same_sha = get(d, "curve_protocol.code_tokens_sha") == get(s1, "code.tokens_sha") and get(
            d, "curve_protocol.general_tokens_sha"
        ) == get(s1, "general.tokens_sha")
        return (
            same_sha,
            f"{len(points())} points on step 1's {int(num(s1, 'code.tokens')):,} code and "
            f"{int(num(s1, 'general.tokens')):,} English tokens",
        )

    ck.check(
        "s3.curve_on_headline_tokens",
        "every curve point scored on the headline's evaluation tokens (step 1's)",
        headline_tokens,
        "this run folder's CPT run was made by an older cptlab, whose curve scored fewer tokens than the headline: "
        "re-run step 3 (notebooks/03_cpt.ipynb), then step 4",
    )

    def curve_intervals():
        pts = points()
        base = opt(s1, "code.units") or pts[0].get("code_units")
        gbase = opt(s1, "general.units") or pts[0].get("general_units")
        for p in pts[1:]:
            wrong = _paired_intervals(p, base, gbase, T)
            if wrong:
                return False, f"step {int(num(p, 'step'))}: {wrong}"
        return True, f"{len(pts) - 1} points, each interval recomputed and holding its estimate"

    ck.check(
        "s3.curve_intervals",
        "each curve point's code drop and forgetting ratio with its paired 95% interval (recomputed)",
        curve_intervals,
        "re-run step 3 (notebooks/03_cpt.ipynb): the curve's intervals come from its per-document sums",
    )

    def model_folder():
        rel = Path(str(get(d, "adapted_model")))
        try:
            inside(run_dir, rel / "config.json")
            weights = sorted(p.name for p in (Path(run_dir) / rel).glob("*.safetensors"))
            if not weights:
                return False, f"{rel}: no safetensors weights"
            tensors = sum(len(safetensors_header(run_dir, rel / w)) for w in weights)
        except (Unsafe, FileNotFoundError, OSError) as exc:
            return False, f"refused: {exc}" if isinstance(exc, Unsafe) else f"{rel}: {exc}"
        return True, f"{rel}: config.json and {len(weights)} safetensors file(s), {tensors} header entries"

    ck.check(
        "s3.adapted_model",
        "a model folder with config.json and safetensors weights",
        model_folder,
        "save the adapted model with save_pretrained(folder, safe_serialization=True) and the tokenizer beside it",
    )
    return ck


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


# A failed gate check means the file is not what its step is about: every point of the question goes.
GATES = {
    "s3.weights_moved": "the adapted model is not shown to differ from the graded preset's base model (a run that "
    "did not train, or another preset's): its results earn nothing"
}


def step_functions(step: int) -> tuple[str, ...]:
    """The learner's functions the step's run is made with (its results earn nothing without one)."""
    return tuple(
        f for q in QUESTIONS.values() if q.step == step and q.kind == "code" and q.runs_the_step for f in q.functions
    )


def not_yours(report: Report, why: str) -> Report:
    """A results file from a run that used none of the learner's code earns nothing: the checks stay
    (they say whether the run is sound) but their points go to one failing row."""
    total = QUESTIONS[report.question].points
    for c in report.checks:
        c.points = 0.0
    gate = why in GATES.values()
    report.checks.append(
        Check(
            f"s{report.step}.{'trained' if gate else 'your_functions'}",
            False,
            "a run that trained" if gate else "the step run on at least one function you wrote",
            why,
            "fix the step's functions (the optimizer step above all), then run the step again"
            if gate
            else "write the step's functions (the cells marked with a pencil), then run the step again",
            points=total,
        )
    )
    return report


def _scored(check: Callable[[str | Path], Report]) -> Callable[[str | Path], Report]:
    def run(run_dir: str | Path, preset: str | None = None) -> Report:
        step = int(check.__name__[-1])
        try:
            report = check(run_dir, preset)
        except Exception as exc:  # noqa: BLE001 - whatever a results file holds, its check reports, never raises
            report = Report(step, TITLES[step], str(run_dir), preset, question=RESULTS_QUESTION[step])
            report.checks.append(
                Check(
                    f"s{step}.readable",
                    False,
                    f"{STEP_FILES[step]} in the shape the lab writes",
                    f"{type(exc).__name__}: {exc}"[:300],
                    f"re-run {NOTEBOOKS[step]} (or `cptlab run`) to rewrite {STEP_FILES[step]}",
                )
            )
        report.share_points(QUESTIONS[report.question].points, RESULTS_WEIGHTS)
        for c in report.checks:
            if c.id in GATES and not c.passed:
                not_yours(report, GATES[c.id])
                break
        if none_written(step_functions(step)):
            not_yours(report, "every function of this step is still a stub: the lab ran the step on its reference")
        return report

    run.__name__ = check.__name__.lstrip("_")
    run.__doc__ = "Every check of the step's results file in ``run_dir``, with the question's points."
    return run


check_step1, check_step2, check_step3, check_step4 = (
    _scored(c) for c in (_check_step1, _check_step2, _check_step3, _check_step4)
)
CHECKS = {1: check_step1, 2: check_step2, 3: check_step3, 4: check_step4}


def check_all(run_dir: str | Path, preset: str | None = None) -> list[Report]:
    """Every step's checks; ``preset``: the instructor's, whose thresholds apply."""
    return [CHECKS[s](run_dir, preset) for s in (1, 2, 3, 4)]
