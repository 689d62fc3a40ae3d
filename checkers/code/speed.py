"""Question 3.4: FLOPs per token and MFU, mistakes named."""

from __future__ import annotations

from typing import Callable

import numpy as np

from checkers.code.harness import Exercise, _close, _NotYet, _numbers, tiny_gpt2
from checkers.core.report import Report
from cptlab.model.loop import seeded


def _flops_variants(model, block: int) -> dict[str, float]:
    """The reference and what each typical mistake gives, counted here from the model's own shapes."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    wpe = model.transformer.wpe.weight.numel()
    wte = model.transformer.wte.weight.numel()
    attention = 12 * c.n_layer * c.n_embd * block
    n = params - wpe
    return {
        "right": 6 * n + attention,
        "right_with_positions": 6 * params
        + attention,  # nanoGPT leaves the lookup table out; counting it is no mistake
        "forward only": 2 * n + attention / 3,
        "forward only, no attention": 2 * n,
        "embedding twice": 6 * (n + wte) + attention,
        "attention missing": 6 * n,
    }


def check_flops(fn: Callable, mfu_fn: Callable | None = None, seed: int | None = None) -> Report:
    """``flops_per_token(model, block_size) -> FLOPs`` of one training token: 6N (forward 2N, backward
    4N) with N the weights a token is multiplied by, plus 12 x layers x d_model x block_size; and
    ``mfu(tokens_per_second, flops_per_token, peak_flops, precision)``: achieved over the peak of the
    precision the run computed in."""
    ex = Exercise("3.4", fn, seed)

    def body():
        cases = [(tiny_gpt2(int(ex.rng.integers(1 << 31))), int(ex.rng.integers(32, 65)))]
        # a second shape: a longer block makes the attention term weigh more
        from transformers import GPT2Config, GPT2LMHeadModel

        wide_seed = int(ex.rng.integers(1 << 31))
        layers, width = int(ex.rng.integers(2, 4)), int(ex.rng.choice([32, 48]))
        with seeded(wide_seed):
            wide = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=61,
                    n_positions=256,
                    n_embd=width,
                    n_layer=layers,
                    n_head=2,
                    bos_token_id=0,
                    eos_token_id=0,
                )
            )
        wide.loss_type = "ForCausalLM"
        cases.append((wide, int(ex.rng.integers(128, 257))))
        for cid, (model, block) in zip(("small_model", "long_block"), cases):
            got = ex.call(model, block)
            if cid == "small_model" and not ex.row(
                "returns",
                isinstance(got, (int, float, np.integer, np.floating)) and not isinstance(got, bool),
                "a number of FLOPs",
                type(got).__name__,
                "return one number: the FLOPs of one training token",
            ):
                return
            v = _flops_variants(model, block)
            ok = _close(float(got), v["right"], 1e-6) or _close(float(got), v["right_with_positions"], 1e-6)
            hint = "6 x N (N: the weights a token is multiplied by) + 12 x n_layer x n_embd x block_size"
            for mistake, says in (
                (
                    "forward only",
                    "the forward pass only. Backward costs twice the forward, so a training token costs 6N, not 2N",
                ),
                (
                    "forward only, no attention",
                    "the forward pass only. Backward costs twice the forward, so a training token costs 6N, not 2N",
                ),
                (
                    "embedding twice",
                    "the embedding counted twice. GPT-2's lm_head is its token embedding (tied): "
                    "model.parameters() already counts it once",
                ),
                (
                    "attention missing",
                    "the attention term missing. Each token is scored against up to block_size positions: add "
                    "12 x n_layer x n_embd x block_size",
                ),
            ):
                if not ok and _close(float(got), v[mistake], 1e-6):
                    hint = f"mistake: {says}"
                    break
            c = model.config
            ex.row(
                cid,
                ok,
                f"{v['right']:.6g} FLOPs ({c.n_layer} layers, n_embd {c.n_embd}, vocab {c.vocab_size}, block {block})",
                f"{float(got):.6g}",
                hint,
            )
        _check_mfu(ex, mfu_fn)

    return ex.run(body)


def _check_mfu(ex: "Exercise", fn: Callable | None) -> None:
    """Random runs at both precisions, a peak table where bf16's is 4-16x fp32's (as on data-centre
    GPUs), each run at an MFU a real one reaches (5-60% of its precision's peak)."""
    if fn is None:
        raise _NotYet()
    ok, got_all, hint = True, [], "MFU is the share of the hardware's peak the run achieved, at the run's precision"
    for precision in ("bf16", "fp32") if ex.rng.random() < 0.5 else ("fp32", "bf16"):
        fp32 = float(ex.rng.uniform(5e12, 70e12))
        peaks = {"fp32": fp32, "bf16": fp32 * float(ex.rng.uniform(4, 16))}
        want, fpt = float(ex.rng.uniform(0.05, 0.6)), float(ex.rng.uniform(5e8, 1e9))
        tps = want * peaks[precision] / fpt
        want = tps * fpt / peaks[precision]
        got = _numbers([ex.call(tps, fpt, dict(peaks), precision, fn=fn)], 1)
        got_all.append(got[0] if got else None)
        if got is not None and _close(got[0], want, 1e-6):
            continue
        ok = False
        other = "fp32" if precision == "bf16" else "bf16"
        for value, says in (
            (
                tps * fpt / peaks[other],
                f"the peak of the other precision. This run computed in {precision}: divide by "
                f"peak_flops[{precision!r}] ({other}'s peak is {peaks[other] / peaks[precision]:.2g}x it)",
            ),
            (100 * want, "a percentage. Return the fraction (0.22, not 22): the table formats it"),
            (1 / want if want else 0.0, "the ratio upside down: achieved FLOP/s over the peak, not the peak over it"),
        ):
            if got is not None and _close(got[0], value, 1e-6):
                hint = f"mistake: {says}"
                break
    ex.row(
        "mfu",
        ok,
        "tokens/s x FLOPs per token / the peak of the run's precision, at bf16 and at fp32",
        ", ".join("?" if g is None else f"{g:.4g}" for g in got_all),
        hint,
        fix="tokens_per_second * flops_per_token / peak_flops[precision]",
    )
