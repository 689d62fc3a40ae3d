"""Checks for each step of the lab, and ``python -m checkers grade`` for instructors.

In a notebook: ``check_perplexity(corpus_perplexity)`` checks a learner's function on fresh random
cases; ``check_step1(RUN_DIR)`` checks the step's results file. Both show a table of every check,
what it expected, what it got, a hint for each failure, and the question's points.

Layers, lowest first: ``core`` (the check collector, questions, thresholds, safe reading), then
``code`` (checks of learner functions) and ``results`` (checks of results files), ``verify``, and
``grading`` (a class, the sandbox, the command line). The grader may use every layer of cptlab.

May import: checkers.core, checkers.code, checkers.results, checkers.verify, checkers.grading, cptlab.core,
cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""

from checkers.code.exercises import (
    check_blocks,
    check_choice,
    check_cpt_loop,
    check_flops,
    check_interpolate,
    check_lora_config,
    check_optimizer_step,
    check_pack,
    check_perplexity,
    check_production_choices,
    check_replay_schedule,
    check_schedule,
    check_split,
    check_tradeoff,
)
from checkers.core.report import Check, Report
from checkers.results.steps import check_all, check_step1, check_step2, check_step3, check_step4

__all__ = [
    "Check",
    "Report",
    "check_all",
    "check_step1",
    "check_step2",
    "check_step3",
    "check_step4",
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
