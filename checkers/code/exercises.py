"""Every check of the learner's code, by question: the index the notebooks, the judge and
``checkers`` import from. Each check lives beside its mistakes in its question family's module.
"""

from __future__ import annotations

import functools
from typing import Callable

from checkers.code import corpus, loop, perplexity, scenarios, speed, tradeoff, training


def revealing(check: Callable) -> Callable:
    """The check, taking ``reveal=True`` too: the report's text then shows each failed row's fix."""

    @functools.wraps(check)
    def run(*args, reveal: bool = False, **kwargs):
        report = check(*args, **kwargs)
        report.reveal = bool(reveal)
        return report

    return run


check_perplexity = revealing(perplexity.check_perplexity)
check_pack = revealing(corpus.check_pack)
check_split = revealing(corpus.check_split)
check_blocks = revealing(corpus.check_blocks)
check_schedule = revealing(training.check_schedule)
check_optimizer_step = revealing(training.check_optimizer_step)
check_cpt_loop = revealing(loop.check_cpt_loop)
check_flops = revealing(speed.check_flops)
check_tradeoff = revealing(tradeoff.check_tradeoff)
check_replay_schedule = revealing(tradeoff.check_replay_schedule)
check_interpolate = revealing(tradeoff.check_interpolate)
check_lora_config = revealing(tradeoff.check_lora_config)
check_choice = revealing(tradeoff.check_choice)
check_production_choices = revealing(scenarios.check_production_choices)
