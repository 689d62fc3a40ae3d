"""Every check of the learner's code, by question: the index the notebooks, the judge and
``checkers`` import from. Each check lives beside its mistakes in its question family's module.
"""

from __future__ import annotations

from checkers.code.corpus import check_blocks, check_pack, check_split
from checkers.code.loop import check_cpt_loop
from checkers.code.perplexity import check_perplexity
from checkers.code.scenarios import check_production_choices
from checkers.code.speed import check_flops
from checkers.code.tradeoff import (
    check_choice,
    check_interpolate,
    check_lora_config,
    check_replay_schedule,
    check_tradeoff,
)
from checkers.code.training import check_optimizer_step, check_schedule

__all__ = [
    "check_perplexity",
    "check_pack",
    "check_split",
    "check_blocks",
    "check_schedule",
    "check_optimizer_step",
    "check_cpt_loop",
    "check_flops",
    "check_tradeoff",
    "check_replay_schedule",
    "check_interpolate",
    "check_lora_config",
    "check_choice",
    "check_production_choices",
]
