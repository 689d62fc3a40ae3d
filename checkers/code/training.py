"""Questions 3.1 and 3.2: the learning-rate schedule and the optimizer step, mistakes named."""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch

from checkers.code.harness import Exercise, _close, _numbers, tiny_gpt2
from checkers.core.report import Report
from cptlab.model.schedule import lr_multiplier


def check_schedule(fn: Callable, seed: int | None = None) -> Report:
    """``lr_at(step, peak_lr, warmup_steps, max_steps)``: linear warm-up to the peak at
    ``warmup_steps``, then a half cosine to 0 at ``max_steps``."""
    ex = Exercise("3.1", fn, seed)

    def body():
        warm = int(ex.rng.integers(2, 20))
        total = warm + int(ex.rng.integers(10, 150))
        peak = float(ex.rng.choice([5e-5, 1e-4, 3e-4, 1e-3]))
        got = [ex.call(s, peak, warm, total) for s in range(1, total + 1)]
        if not ex.row(
            "returns",
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in got),
            "a finite number for every step",
            repr(got[:3])[:80],
            "return a float: the learning rate of that step",
        ):
            return
        want = [peak * lr_multiplier(s, warm, total) for s in range(1, total + 1)]
        tol = 1e-9 * peak

        def same(a, b):
            return all(abs(x - y) <= tol for x, y in zip(a, b))

        zero_based = same(got, [peak * lr_multiplier(s - 1, warm, total) for s in range(1, total + 1)])
        hint = f"a linear warm-up: step 1 gets a {warm}th of the peak, step {warm} the peak itself"
        if zero_based:
            hint = (
                "mistake: steps counted from 0. The lab's steps are 1-based (step 1 is the first update), so every "
                "rate here is the one of the step before; the cosine's and the end's rows follow from it"
            )
        elif got[0] == 0:
            hint = (
                "mistake: warm-up off by one: lr 0 at the first update. Step 1 is an update: give it peak_lr / "
                "warmup_steps"
            )
        elif int(np.argmax(got)) + 1 == warm + 1:
            hint = (
                f"mistake: warm-up off by one: the peak comes a step late (step {warm + 1}). Reach peak_lr exactly "
                "at step warmup_steps"
            )
        ex.row(
            "warmup",
            same(got[:warm], want[:warm]),
            f"steps 1..{warm}: {want[0]:.3g} rising linearly to {peak:g}",
            f"{got[0]:.3g} .. {got[warm - 1]:.3g}",
            hint,
            fix="lr = peak_lr * step / warmup_steps  # for step <= warmup_steps",
        )
        over_all = [peak * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(warm + 1, total + 1)]
        hint = "after warm-up: a half cosine from the peak at warmup_steps down to 0 at max_steps"
        if zero_based:
            hint = "mistake: steps counted from 0 (the warm-up row's cause): each step has the previous step's rate"
        elif same(got[warm:], over_all):
            hint = (
                "mistake: cosine over all steps instead of the steps after warm-up. The decay starts at the peak, "
                "so its progress runs from 0 at warmup_steps to 1 at max_steps"
            )
        elif abs(got[-1]) > tol:
            hint = (
                "mistake: not reaching the minimum at the end. At step max_steps the cosine's progress is 1 and "
                "the rate 0"
            )
        ex.row(
            "cosine",
            same(got[warm:], want[warm:]),
            f"steps {warm + 1}..{total}: half cosine from {peak:g} down to 0",
            f"{got[warm]:.3g} .. {got[-1]:.3g}",
            hint,
            fix="lr = peak_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (max_steps - warmup_steps)))",
        )
        ex.row(
            "end",
            abs(got[-1]) <= tol,
            f"lr 0 at the last step ({total})",
            f"{got[-1]:.3g}",
            "mistake: steps counted from 0 (the warm-up row's cause): the last step gets the rate of the one before"
            if zero_based
            else "mistake: not reaching the minimum at the end: the last step's progress must be exactly 1",
        )

    return ex.run(body)


def _sgd_steps(
    model, batches, lr: float, max_norm: float, clip: bool = True, zero: bool = True
) -> tuple[list, list, list]:
    """The reference optimizer step, by hand, and the typical mistakes as switches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, norms, states = [], [], []
    for x in batches:
        loss = model(x, labels=x).loss
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        if zero:
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        norms.append(norm.item())
        states.append([p.detach().clone() for p in model.parameters()])
    return losses, norms, states


def _same_params(a: list, b: list, rel: float = 1e-4) -> bool:
    return all(torch.allclose(x, y, rtol=rel, atol=1e-6) for x, y in zip(a, b))


def check_optimizer_step(fn: Callable, seed: int | None = None) -> Report:
    """``optimizer_step(model, batch, optimizer, max_norm) -> (loss, pre-clip grad norm)``:
    forward, loss, backward, clip the global norm, step, zero the gradients."""
    ex = Exercise("3.2", fn, seed)

    def body():
        base = tiny_gpt2(ex.seed, n_positions=32)
        gen = torch.Generator().manual_seed(ex.seed)
        batches = [torch.randint(0, base.config.vocab_size, (2, 16), generator=gen) for _ in range(2)]
        _, norms0, _ = _sgd_steps(copy.deepcopy(base), batches[:1], 0.0, 1.0, clip=False)
        max_norm = 0.25 * norms0[0]  # the first step's gradient is clipped hard: where clipping sits shows
        lr = 0.5
        ref_loss, ref_norm, ref_states = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm)
        _, _, unclipped = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm, clip=False)
        _, _, unzeroed = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm, zero=False)
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        first = _numbers(ex.call(model, batches[0].clone(), opt, max_norm), 2)
        after1 = [p.detach().clone() for p in model.parameters()]
        second = ex.call(model, batches[1].clone(), opt, max_norm)
        after2 = [p.detach().clone() for p in model.parameters()]
        ok = first is not None and _numbers(second, 2) is not None
        if not ex.row(
            "returns",
            ok,
            "(loss, grad_norm): two numbers",
            f"({first[0]:.4g}, {first[1]:.4g})" if ok else repr(second if first is not None else first)[:80],
            "return the loss (a number or 0-d tensor) and clip_grad_norm_'s return value",
        ):
            return
        loss, norm = first
        ex.row(
            "loss",
            _close(loss, ref_loss[0]),
            f"the batch's mean next-token loss {ref_loss[0]:.6g}",
            f"{loss:.6g}",
            "the model's own next-token loss on the batch, with the batch as its labels (transformers shifts them)",
            fix="loss = model(batch, labels=batch).loss",
        )
        hint = "return the value clip_grad_norm_ returns: the total norm before clipping"
        if _close(norm, max_norm, 1e-3):
            hint = (
                "mistake: the post-clip norm returned. clip_grad_norm_ returns the norm before clipping; after "
                "clipping it "
                "is max_norm by construction and tells you nothing"
            )
        ex.row(
            "grad_norm",
            _close(norm, ref_norm[0], 1e-3),
            f"the pre-clip gradient norm {ref_norm[0]:.6g} (max_norm was {max_norm:.3g})",
            f"{norm:.6g}",
            hint,
        )
        unchanged = _same_params(after1, [p.detach() for p in base.parameters()], 0)
        ex.row(
            "moved",
            not unchanged,
            "the weights change after a step",
            "unchanged" if unchanged else "changed",
            "mistake: the weights never change. Call optimizer.step() after backward() and clipping: "
            "a step that updates nothing earns none of this question's points",
        )
        hint = "order: loss.backward(), clip_grad_norm_(model.parameters(), max_norm), optimizer.step()"
        if _same_params(after1, unclipped[0]):
            hint = (
                "mistake: clipping after optimizer.step(), or not at all. The update used the raw gradient: clip "
                "between "
                "backward() and optimizer.step()"
            )
        elif _same_params(after1, [p.detach() for p in base.parameters()], 0):
            hint = "the weights did not change: call optimizer.step()"
        ex.row(
            "update",
            _same_params(after1, ref_states[0]),
            "the weights after one step equal the reference update (clipped gradient)",
            "same" if _same_params(after1, ref_states[0]) else "other weights",
            hint,
        )
        hint = "zero the gradients every step: optimizer.zero_grad(set_to_none=True) after optimizer.step()"
        if _same_params(after2, unzeroed[1]):
            hint = (
                "mistake: gradients never zeroed. backward() adds into .grad, so the second step used both batches' "
                "gradients: call optimizer.zero_grad() every step"
            )
        ex.row(
            "zero_grad",
            _same_params(after2, ref_states[1]),
            "a second step uses only the second batch's gradient",
            "same" if _same_params(after2, ref_states[1]) else "other weights",
            hint,
        )

    return ex.run(body)
