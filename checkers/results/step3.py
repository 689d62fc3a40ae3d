"""Step 3's results: the CPT run's schedule, loss, curve and adapted weights, recomputed
independently of the training code.
"""

from __future__ import annotations

import math
from pathlib import Path

from checkers.core.report import Report
from checkers.core.safe_files import Unsafe, inside, safetensors_header
from checkers.results.common import Missing, _paired_intervals, _start, close, get, load, num, older, opt


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
