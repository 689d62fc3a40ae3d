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

from importlib import import_module

# Where each name lives. Imported on first use: ``python -m checkers grade`` and ``summarize`` read
# JSON only and start without torch and transformers (7 s here); a notebook's check cell pays it once.
_HOME = {
    "Check": "checkers.core.report",
    "Report": "checkers.core.report",
    **{n: "checkers.results.steps" for n in ("check_all", "check_step1", "check_step2", "check_step3", "check_step4")},
}


def __getattr__(name: str):
    home = _HOME.get(name) or ("checkers.code.exercises" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'checkers' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


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
