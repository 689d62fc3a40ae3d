"""check_step1 .. check_step4: every check of a step, recomputing derived values from raw ones.

Never raises on missing or malformed results: a check fails and says what is missing. Executes
nothing from the run folder; results are read as plain JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from checkers.core.questions import QUESTIONS, RESULTS_QUESTION, RESULTS_WEIGHTS
from checkers.core.report import Check, Report
from checkers.results.common import NOTEBOOKS
from checkers.results.step1 import _check_step1
from checkers.results.step2 import _check_step2
from checkers.results.step3 import _check_step3, loss_trend, schedule
from checkers.results.step4 import _check_step4
from cptlab.core.results import STEP_FILES
from cptlab.core.results import STEP_TITLES as TITLES
from cptlab.notebook.fallback import none_written

# A failed gate check means the file is not what its step is about: every point of the question goes.
GATES = {
    "s3.weights_moved": "the adapted model is not shown to differ from the graded preset's base model (a run that "
    "did not train, or another preset's): its results earn nothing"
}


def step_functions(step: int) -> tuple[str, ...]:
    """The learner's functions the step's run is made with (its results earn nothing without one)."""
    return tuple(
        f for q in QUESTIONS.values() if q.step == step and q.kind == "code" and q.runs_the_step for f in q.functions
    )


def not_yours(report: Report, why: str) -> Report:
    """A results file from a run that used none of the learner's code earns nothing: the checks stay
    (they say whether the run is sound) but their points go to one failing row."""
    total = QUESTIONS[report.question].points
    for c in report.checks:
        c.points = 0.0
    gate = why in GATES.values()
    report.checks.append(
        Check(
            f"s{report.step}.{'trained' if gate else 'your_functions'}",
            False,
            "a run that trained" if gate else "the step run on at least one function you wrote",
            why,
            "fix the step's functions (the optimizer step above all), then run the step again"
            if gate
            else "write the step's functions (the cells marked with a pencil), then run the step again",
            points=total,
        )
    )
    return report


def _scored(check: Callable[[str | Path], Report]) -> Callable[[str | Path], Report]:
    def run(run_dir: str | Path, preset: str | None = None, *, own_verdicts: bool = True) -> Report:
        step = int(check.__name__[-1])
        try:
            report = check(run_dir, preset)
        except Exception as exc:  # noqa: BLE001 - whatever a results file holds, its check reports, never raises
            report = Report(step, TITLES[step], str(run_dir), preset, question=RESULTS_QUESTION[step])
            report.checks.append(
                Check(
                    f"s{step}.readable",
                    False,
                    f"{STEP_FILES[step]} in the shape the lab writes",
                    f"{type(exc).__name__}: {exc}"[:300],
                    f"re-run {NOTEBOOKS[step]} (or `cptlab run`) to rewrite {STEP_FILES[step]}",
                )
            )
        report.share_points(QUESTIONS[report.question].points, RESULTS_WEIGHTS)
        for c in report.checks:
            if c.id in GATES and not c.passed:
                not_yours(report, GATES[c.id])
                break
        # in a notebook: its checks' verdicts, this process's. The grader (own_verdicts=False) judges
        # a class in one process, so it decides from each learner's own reports instead
        if own_verdicts and none_written(step_functions(step)):
            not_yours(report, "every function of this step is still a stub: the lab ran the step on its reference")
        return report

    run.__name__ = check.__name__.lstrip("_")
    run.__doc__ = "Every check of the step's results file in ``run_dir``, with the question's points."
    return run


check_step1, check_step2, check_step3, check_step4 = (
    _scored(c) for c in (_check_step1, _check_step2, _check_step3, _check_step4)
)


CHECKS = {1: check_step1, 2: check_step2, 3: check_step3, 4: check_step4}


def check_all(run_dir: str | Path, preset: str | None = None) -> list[Report]:
    """Every step's checks; ``preset``: the instructor's, whose thresholds apply."""
    return [CHECKS[s](run_dir, preset) for s in (1, 2, 3, 4)]


__all__ = [
    "check_all",
    "check_step1",
    "check_step2",
    "check_step3",
    "check_step4",
    "CHECKS",
    "not_yours",
    "loss_trend",
    "schedule",
]
