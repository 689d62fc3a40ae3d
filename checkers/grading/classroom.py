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
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from checkers.core.questions import GRADED_TRACKS
from checkers.grading.flags import flag_copies
from checkers.grading.gradebook import merge_rubric, merge_shards, write_gradebook
from checkers.grading.judge import Limits
from checkers.grading.learner import grade_learner, learner_seed
from checkers.grading.machine_limits import memory_caps
from checkers.grading.result import LearnerResult, load_result, save_result, submission_digest
from checkers.grading.sandbox import Sandbox
from checkers.grading.submissions import merge_answers
from cptlab.core.cache import cache_root
from cptlab.core.config import get_config
from cptlab.data.wiki_sample import data_dir
from cptlab.model.measure import resolve_base_model


class _Progress:
    """The class's progress on standard error: learners done, and the time left at the current pace."""

    def __init__(self, total: int, kept: int, todo: int):
        self.total, self.kept, self.todo, self.n = total, kept, todo, 0
        self.start, self.lock = time.monotonic(), threading.Lock()
        if kept:
            print(f"[grade-class] {kept} of {total} learner(s) graded by an earlier run: kept", file=sys.stderr)

    def done(self, learner: str) -> None:
        with self.lock:
            self.n += 1
            spent = time.monotonic() - self.start
            left = spent / self.n * (self.todo - self.n)
            print(
                f"[grade-class] {learner} graded: {self.kept + self.n}/{self.total} done, "
                f"{spent / 60:.1f} min so far, about {left / 60:.1f} min left at this pace",
                file=sys.stderr,
                flush=True,
            )


def usable_cores() -> int:
    """The cores this grader may use: a Slurm task's allocation, else the ones this process may run on."""
    allotted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if allotted.isdigit() and int(allotted) > 0:
        return int(allotted)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def grade_class(
    submissions: Path,
    preset: str,
    out: Path,
    jobs: int = 1,
    timeout: float = 900.0,
    limits: Limits | None = None,
    notebook_memory: int | None = None,
    shard: tuple[int, int] = (1, 1),
    track: str = "core",
    force_memory: bool = False,
) -> list[LearnerResult]:
    """Grade every learner folder of ``submissions`` (or, with ``shard=(k, n)``, the k-th of n
    deterministic slices of them, for a scheduler's array job; ``merge-shards`` joins the gradebooks),
    on ``track``: ``core`` (its 100 points; Go further's cells left out of the runs and its functions
    run on the lab's reference) or ``full`` (the core and Go further, each its own points).

    Each learner's result is written to ``out/learners/ID.json`` as soon as it is graded; run again
    on the same ``out`` (after a stop), only the learners without one, or whose submission or
    grading settings changed since, are graded, and the gradebook is written from them all.

    The memory caps (a notebook's, a function check's) default to what the machine can give ``jobs``
    learners at once (``machine_limits``); one asked for above that is refused unless ``force_memory``."""
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
    caps = memory_caps(jobs, notebook_memory, limits.memory_bytes if limits else None, force_memory)
    limits = Limits(limits.seconds if limits else Limits().seconds, caps.check)
    print(f"[grade-class] {caps.describe()}", file=sys.stderr, flush=True)
    cfg = get_config(preset)
    resolve_base_model(cfg, progress=False)  # built once here, shared read-only with every learner
    if cfg.base_model is None:
        data_dir()
    sandbox, threads, cache = Sandbox(), max(1, usable_cores() // max(1, jobs)), cache_root().resolve()
    graded = out / "learners"  # one file per graded learner: a stopped class resumes from them
    hide = (out.resolve(), submissions.resolve())
    if track not in GRADED_TRACKS:
        raise ValueError(f"--track {track!r}: core or full")
    settings = {"preset": preset, "timeout": timeout, "limits": [limits.seconds, limits.memory_bytes], "track": track}
    keys = {f.name: {**settings, "submission": submission_digest(f)} for f in folders}
    kept = {f.name: r for f in folders if (r := load_result(graded / f"{f.name}.json", keys[f.name]))}
    todo = [f for f in folders if f.name not in kept]
    log = _Progress(len(folders), len(kept), len(todo))

    def one(folder: Path) -> LearnerResult:
        r = grade_learner(folder, preset, out, timeout, threads, sandbox, cache, limits, hide, caps.notebook, track)
        save_result(graded / f"{folder.name}.json", r, keys[folder.name])
        log.done(folder.name)
        return r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        fresh = {r.learner: r for r in pool.map(one, todo)}
    results = [kept.get(f.name) or fresh[f.name] for f in folders]
    flag_copies(results)
    write_gradebook(out, preset, f"{sandbox.name}; {caps.describe()}", results)
    return results


__all__ = [
    "learner_seed",
    "merge_answers",
    "merge_shards",
    "merge_rubric",
    "LearnerResult",
]
