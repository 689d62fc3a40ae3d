"""Question 3.3: the learner's CPT loop, run on a probe run that records every call, mistakes named."""

from __future__ import annotations

from typing import Callable

from checkers.code.harness import Exercise, _close_lists
from checkers.core.report import Report
from cptlab.model.loop import ProbeRun, cpt_loop
from cptlab.model.schedule import lr_multiplier


def _loop_trace(run: ProbeRun) -> dict:
    """The probe's record, read defensively (in grading it comes back from the learner's process)."""
    t = run.trace
    events = t.get("events") if isinstance(t, dict) else None
    events = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    def of(op):
        return [e for e in events if e.get("op") == op]

    curve = t.get("curve") if isinstance(t, dict) and isinstance(t.get("curve"), list) else []
    return {
        "log": of("log"),
        "steps": of("step"),
        "evals": of("evaluate"),
        "batches": of("batch"),
        "curve": curve,
        "order": [e.get("op") for e in events],
    }


def _loop_case(ex: "Exercise", seed: int, config: dict, ratios: dict, first_step: int = 1) -> dict:
    """The learner's loop on a probe run: its trace."""
    run = ProbeRun(seed, config, ratios, first_step)
    ex.call(run, run.lr_at, run.optimizer_step)
    return _loop_trace(run)


def _reference_trace(seed: int, config: dict, ratios: dict) -> dict:
    ref = ProbeRun(seed, config, ratios)
    cpt_loop(ref, ref.lr_at, ref.optimizer_step)
    return _loop_trace(ref)


def _steps_of(events: list[dict]) -> list:
    return [e.get("step") for e in events]


def check_cpt_loop(fn: Callable, seed: int | None = None) -> Report:
    """``cpt_loop(run, lr_at, optimizer_step)``: steps ``run.first_step``..``max_steps``, this step's
    rate on every parameter group, a fresh batch, the log, the curve every ``curve_every`` steps and
    at the last (eval mode, no gradients, then train mode again), and the stop at the floor."""
    ex = Exercise("3.3", fn, seed)

    def body():
        rng = ex.rng
        every = int(rng.integers(2, 4))
        n = every * int(rng.integers(2, 4)) + 1  # not a multiple of curve_every: the last step needs its own point
        base = {
            "max_steps": n,
            "warmup_steps": int(rng.integers(1, 3)),
            "cpt_lr": float(rng.uniform(0.01, 0.05)),
            "curve_every": every,
            "retention_floor": 1.05,
            "grad_clip": round(float(rng.uniform(0.3, 0.8)), 2),  # not the recipe's 1.0: a typed-in 1.0 shows
        }
        above = {s: 1.2 for s in range(0, n + 1)}  # every point above the floor: only a loop asked to stop stops
        got = _loop_case(ex, ex.seed, {**base, "stop_at_floor": False}, above)
        want = list(range(1, n + 1))
        steps = _steps_of(got["log"])
        hint = "every step from run.first_step to cfg.max_steps, both included, logged once"
        if steps == want[:-1]:
            hint = "mistake: one step short. Python's range stops before its end, so the last step never ran"
        elif steps == [s - 1 for s in want]:
            hint = "mistake: steps counted from 0. Steps are 1-based (lr_at(0) is 0: a step that learns nothing)"
        elif steps and steps == want[: len(steps)] and steps[-1] in _steps_of(got["evals"]):
            hint = "mistake: the run stopped at the floor although cfg.stop_at_floor is False: stop only when asked"
        ex.row(
            "steps",
            steps == want,
            f"steps {want[0]} to {want[-1]} logged, once each",
            f"{steps}"[:80],
            hint,
            fix="for step in range(run.first_step, cfg.max_steps + 1):",
        )
        # each row below judges the steps the loop ran, so one mistake costs its own row only
        used = [e.get("batch") for e in got["steps"]]
        fresh = bool(steps) and used == steps and _steps_of(got["batches"]) == steps
        ex.row(
            "batches",
            fresh,
            "each step trains on its own batch, run.batch(step)",
            "yes" if fresh else f"batches used: {used}"[:80],
            "mistake: one batch for every step, or another step's. Each step trains on the batch the run gives for "
            "that step, fetched inside the loop",
            fix="batch = run.batch(step)  # inside the loop, then optimizer_step(run.model, batch, ...)",
        )
        lr = [[base["cpt_lr"] * lr_multiplier(s, base["warmup_steps"], n)] * 2 for s in steps]  # both groups
        mine = [e.get("lrs") for e in got["steps"]]
        hint = "the optimizer reads its rate from each parameter group: the step's rate must be in every one"
        start = ProbeRun.start_lr
        if mine and all(isinstance(x, list) and all(v == start for v in x) for x in mine):
            hint = (
                "mistake: the rate computed but never assigned. The optimizer kept its first rate: set "
                "group['lr'] = lr on every group of run.optimizer.param_groups before optimizer_step"
            )
        elif mine and all(isinstance(x, list) and len(x) > 1 and x[1] == start for x in mine):
            hint = "mistake: the rate set on the first parameter group only. GPT-2's optimizer has two: set every group"
        elif len(mine) == len(lr) > 1 and _close_lists(mine[1:], lr[:-1]):
            hint = (
                "mistake: each step ran with the previous step's rate: set the rate before this step's optimizer_step"
            )
        rate_ok = bool(steps) and _close_lists(mine, lr)
        ex.row(
            "rate",
            rate_ok,
            "every step's optimizer holds lr_at(step) in every group",
            f"{mine[:2]}"[:80],
            hint,
            fix="for group in run.optimizer.param_groups:\n    group['lr'] = lr  # before optimizer_step",
        )
        # the log: each step's rate and the loss its optimizer_step returned; with the steps and rates
        # right, the very losses of the reference loop on the same seed
        logged = [[e.get("lr"), e.get("loss")] for e in got["log"]]
        own = [[x[0], e.get("loss")] for x, e in zip(lr, got["steps"])]
        ok = bool(logged) and _close_lists(logged, own, 1e-5)
        trains = all(e.get("training") is True for e in got["steps"])  # a mode mistake changes the losses too
        if ok and steps == want and rate_ok and fresh and trains:
            ref = _reference_trace(ex.seed, {**base, "stop_at_floor": False}, above)
            ok = _close_lists(logged, [[e.get("lr"), e.get("loss")] for e in ref["log"]], 1e-5)
        clips = [e.get("max_norm") for e in got["steps"]]
        typed = [c for c in clips if not (isinstance(c, (int, float)) and abs(c - base["grad_clip"]) < 1e-6)]
        hint = (
            "log each step once, after its optimizer_step, with the step's rate and the loss and gradient norm "
            "optimizer_step returned: the log is what the run's plots and checks read"
        )
        if typed:
            ok = False
            hint = (
                f"mistake: optimizer_step was given max_norm={typed[0]:.3g}, not this run's "
                f"cfg.grad_clip ({base['grad_clip']}): read every setting from run.cfg, never type the recipe's numbers"
            )
        ex.row(
            "log",
            ok,
            "each step logged once with its rate and optimizer_step's loss (the reference loop's, same seed)",
            "yes" if ok else f"{logged[:2]}"[:80],
            hint,
            fix="run.log(step, lr, loss, grad_norm)  # right after optimizer_step, given cfg.grad_clip",
        )
        evals = got["evals"]
        ok = bool(evals) and all(e.get("training") is False and e.get("grad") is False for e in evals)
        after = all(e.get("training") is True for e in got["steps"])
        hint = ""
        if evals and any(e.get("training") for e in evals):
            hint = "mistake: evaluation in train mode (dropout on). Call run.model.eval() before run.evaluate(step)"
        elif evals and any(e.get("grad") for e in evals):
            hint = (
                "mistake: evaluation with gradients on (memory for a backward pass that never comes). Call "
                "run.evaluate(step) inside `with torch.no_grad():`"
            )
        elif not after:
            hint = (
                "mistake: the model left in eval() mode after evaluating: the next steps trained without dropout. Call "
                "run.model.train() after run.evaluate"
            )
        elif not evals:
            hint = "no evaluation: call run.evaluate(step) at the curve's steps"
        ex.row(
            "modes",
            ok and after,
            "evaluate in eval mode without gradients, train in train mode",
            "yes" if ok and after else "no",
            hint,
        )
        want_curve = [s for s in want if s % every == 0 or s == n]
        ran_curve = [s for s in steps if s in want_curve]  # the points of the steps the loop ran
        at = _steps_of(evals)
        hint = "evaluate when step % cfg.curve_every == 0 or step == cfg.max_steps"
        if at == want_curve[:-1] and steps == want:
            hint = "mistake: the last step has no point. Evaluate at step == cfg.max_steps too: it is step 4's number"
        elif at == want:
            hint = "mistake: a point at every step. Evaluate every cfg.curve_every steps (and at the last)"
        elif {s for s in at if s != n} in [{s for s in want if (s + d) % every == 0 and s != n} for d in (-1, 1)]:
            hint = "mistake: the curve at the wrong steps (off by one): evaluate when step % cfg.curve_every == 0"
        recorded = got["curve"] == at
        if at == ran_curve and not recorded:
            hint = "mistake: the points never reach the curve. Append each one: run.curve.append(point)"
        ex.row(
            "curve",
            bool(at) and at == ran_curve and recorded,
            f"points at steps {ran_curve or want_curve}, appended to run.curve",
            f"evaluated at {at}, curve {got['curve']}"[:80],
            hint,
        )
        # the floor: the first point equals it (no stop: above means >), a later one is above it
        k1, k2 = want_curve[0], want_curve[1]
        ratios = {s: 1.0 for s in range(0, n + 1)}
        ratios.update({k1: 1.05, k2: 1.07})
        got_f = _loop_case(ex, ex.seed + 1, {**base, "stop_at_floor": True}, ratios)
        steps_f, curve_f = _steps_of(got_f["log"]), got_f["curve"]
        ok = steps_f == list(range(1, k2 + 1)) and curve_f == [s for s in want_curve if s <= k2]
        hint = (
            "with cfg.stop_at_floor: append the point, then break once point['forgetting_ratio'] > cfg.retention_floor"
        )
        if _steps_of(got_f["evals"]) != [s for s in want_curve if s <= (steps_f or [0])[-1]]:
            hint = "the floor is tested at the curve's points: fix the curve's steps first (the row above)"
        elif steps_f and steps_f[-1] == k1:
            hint = (
                f"mistake: stopped at step {k1}, whose ratio equals the floor. Stop only above it (>), not at it (>=)"
            )
        elif steps_f and steps_f[-1] == k2 and k2 not in curve_f:
            hint = (
                "mistake: the floor tested before the point is recorded. The run stopped, but the point that "
                "stopped it is not in run.curve: append it first, then test it"
            )
        elif steps_f == want:
            hint = "mistake: never stopped. With cfg.stop_at_floor, break once the ratio is above cfg.retention_floor"
        elif steps_f and steps_f[-1] == k2 + 1:
            hint = "mistake: stopped a step late: break right after the point that crossed the floor"
        ex.row(
            "floor",
            ok,
            f"stop at step {k2}, its point in the curve (step {k1}'s ratio equals the floor: no stop)",
            f"stopped at {steps_f[-1] if steps_f else None}, curve {curve_f}"[:80],
            hint,
        )
        # a resumed run: steps from run.first_step on
        first = int(rng.integers(2, n))
        got_r = _loop_case(ex, ex.seed + 2, {**base, "stop_at_floor": False}, above, first)
        steps_r = _steps_of(got_r["log"])
        ex.row(
            "resume",
            bool(steps_r) and steps_r == list(range(first, first + len(steps_r))),
            f"a run resumed at step {first} runs steps {first} to {n}",
            f"{steps_r}"[:80],
            "mistake: run.first_step ignored, so a resumed run redoes the steps its checkpoint already holds"
            if steps_r == want
            else "a resumed run starts at run.first_step",
            fix="for step in range(run.first_step, cfg.max_steps + 1):",
        )

    return ex.run(body)
