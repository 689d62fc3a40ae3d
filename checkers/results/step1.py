"""Step 1's results: the base model's code and English perplexity, recomputed from raw sums."""

from __future__ import annotations

import math
from pathlib import Path

from checkers.core.report import Report
from checkers.core.thresholds import BEFORE_INTERVALS
from checkers.results.common import _interval, _ppl_from_raw, _start, _units, get, num, older
from cptlab.core.uncertainty import ppl_interval


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
