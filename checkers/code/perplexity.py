"""Question 1.1: the learner's corpus perplexity against the lab's protocol, mistakes named."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from checkers.code.harness import Exercise, _close, _numbers, tiny_gpt2
from checkers.core.report import Report
from cptlab.model.perplexity import perplexity, plan_windows


def check_perplexity(fn: Callable, seed: int | None = None) -> Report:
    """``corpus_perplexity(model, ids, block_size) -> (ppl, nll_sum, n_scored)``."""
    ex = Exercise("1.1", fn, seed)

    def body():
        model = tiny_gpt2(ex.seed, sharp=30.0)
        block = int(ex.rng.choice([8, 12, 16]))
        k = int(ex.rng.integers(3, 6))
        # the last window is short, and its length keeps the typical mistakes' token counts apart
        r = int(ex.rng.choice([x for x in range(2, block // 2) if x != block - k - 1]))
        n = block * k + r
        ids = torch.as_tensor(ex.rng.integers(0, model.config.vocab_size, n), dtype=torch.long)
        # every path to the logits embeds the tokens: the embedding sees each forward pass
        hook = model.transformer.wte.register_forward_pre_hook(lambda m, a: ex.grad_on.append(torch.is_grad_enabled()))
        try:
            out = ex.call(model, ids.clone(), block)
        finally:
            hook.remove()
        grad_on = ex.grad_on
        ref = perplexity(model, ids, block, batch_size=4)
        # per-window sums by a plain loop: what each typical mistake would return
        sums, counts = [], []
        with torch.no_grad():
            for b, e, _ in plan_windows(n, block):
                x = ids[b:e]
                logits = model(x[None]).logits[0, :-1]
                sums.append(F.cross_entropy(logits.double(), x[1:], reduction="sum").item())
                counts.append(len(x) - 1)
        vals = _numbers(out, 3)
        if not ex.row(
            "returns",
            vals is not None,
            "a tuple (ppl, nll_sum, n_scored) of three numbers",
            repr(out)[:80],
            "return three numbers: math.exp(nll_sum / n_scored), the summed NLL, and the count of scored tokens",
        ):
            return
        ppl, nll, n_scored = vals
        ex.row(
            "no_grad",
            bool(grad_on) and not any(grad_on),
            "every forward pass without gradients",
            f"{sum(grad_on)} of {len(grad_on)} forward passes with gradients enabled"
            if grad_on
            else "the model given was never run: compute the logits with model(...) on each window",
            "mistake: gradients enabled. Evaluation needs no gradients: wrap the loop in `with torch.no_grad():` "
            "(it saves the memory of every activation)",
        )
        n_windows = len(counts)
        hint = "count tokens 2..n of each window (a window of n tokens scores n - 1 of them)"
        if n_scored == n:
            hint = (
                "mistake: scoring the first token of a window. The first token of each window has no context; "
                "it is not scored: count len(window) - 1 per window"
            )
        elif n_scored == n_windows * (block - 1) or n_scored == n_windows * block:
            hint = (
                "mistake: scoring padding. The last window is shorter than block_size: score it as it is, "
                "never pad it (padded positions are not text)"
            )
        ex.row(
            "tokens",
            n_scored == ref.tokens,
            f"n_scored = {ref.tokens} ({n} tokens in {n_windows} windows of up to {block})",
            f"{n_scored:g}",
            hint,
        )
        ex.row(
            "nll_sum",
            _close(nll, ref.nll_sum),
            f"nll_sum = {ref.nll_sum:.6g} (sum of every scored token's NLL)",
            f"{nll:.6g}",
            "sum F.cross_entropy(logits[:-1], x[1:], reduction='sum') over the windows; do not average per window",
        )
        mean_of_ppl = float(np.mean([math.exp(s / c) for s, c in zip(sums, counts)]))
        mean_of_losses = math.exp(float(np.mean([s / c for s, c in zip(sums, counts)])))
        hint = "ppl = math.exp(nll_sum / n_scored): one exp of the token-weighted mean NLL"
        if _close(ppl, mean_of_ppl) and not _close(ppl, ref.ppl):
            hint = "mistake: a mean of per-window perplexities. Sum the NLL over every scored token, then exp once"
        elif _close(ppl, mean_of_losses) and not _close(ppl, ref.ppl):
            hint = (
                "mistake: an unweighted mean of window losses. Windows hold different numbers of tokens (the last is "
                "short): weight by tokens, i.e. exp(total NLL / total scored tokens)"
            )
        ex.row("ppl", _close(ppl, ref.ppl), f"ppl = {ref.ppl:.6g} (token-weighted, exp once)", f"{ppl:.6g}", hint)

    return ex.run(body)
