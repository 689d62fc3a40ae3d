"""Grading a class: ``python -m checkers grade-class SUBMISSIONS --preset tiny --out GRADES``.

SUBMISSIONS holds one folder per learner (its name is the learner id) with the learner's step
notebooks. For each learner, only the answer cells (tagged ``solution`` or ``answer``) are taken
from the submitted notebooks and put into pristine copies of the instructor's notebooks, so edits
to check cells, the parameters cell or library calls change nothing. The merged notebooks run
headless in a fresh run folder with the instructor's preset and the learner's own seed, one
notebook at a time under a wall-clock limit, in a bubblewrap sandbox where one is installed
(read-only file system but the run folder, no network, its own process tree). Points come from
the pristine check cells' outputs and from the grader's own checks of the results files. A
failing or hanging submission never stops the class: its row says why.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from checkers.grading.flags import flag_copies
from checkers.grading.gradebook import merge_rubric, merge_shards, write_gradebook
from checkers.grading.judge import Limits
from checkers.grading.learner import grade_learner, learner_seed
from checkers.grading.result import LearnerResult
from checkers.grading.sandbox import Sandbox
from checkers.grading.submissions import merge_answers
from cptlab.core.cache import cache_root
from cptlab.core.config import get_config
from cptlab.data.wiki_sample import data_dir
from cptlab.model.measure import resolve_base_model


def grade_class(
    submissions: Path,
    preset: str,
    out: Path,
    jobs: int = 1,
    timeout: float = 900.0,
    limits: Limits = Limits(),
    notebook_memory: int = 16 << 30,
    shard: tuple[int, int] = (1, 1),
) -> list[LearnerResult]:
    """Grade every learner folder of ``submissions`` (or, with ``shard=(k, n)``, the k-th of n
    deterministic slices of them, for a scheduler's array job; ``merge-shards`` joins the gradebooks)."""
    submissions, out = Path(submissions), Path(out)
    folders = sorted(
        p for p in submissions.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    if not folders:
        raise ValueError(f"{submissions} holds no learner folders: one folder per learner, named by the learner id")
    k, n = shard
    if not 1 <= k <= n:
        raise ValueError(f"--shard {k}/{n}: K must be between 1 and N")
    folders = folders[k - 1 :: n]
    cfg = get_config(preset)
    resolve_base_model(cfg, progress=False)  # built once here, shared read-only with every learner
    if cfg.base_model is None:
        data_dir()
    sandbox, threads, cache = Sandbox(), max(1, (os.cpu_count() or 1) // max(1, jobs)), cache_root().resolve()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        hide = (out.resolve(), submissions.resolve())
        results = list(
            pool.map(
                lambda f: grade_learner(
                    f, preset, out, timeout, threads, sandbox, cache, limits, hide, notebook_memory
                ),
                folders,
            )
        )
    flag_copies(results)
    write_gradebook(out, preset, sandbox.name, results)
    return results

__all__ = [
    "learner_seed",
    "merge_answers",
    "merge_shards",
    "merge_rubric",
    "LearnerResult",
]
