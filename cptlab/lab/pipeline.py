"""All four steps and the study in one call: what ``cptlab run`` does. A run folder is never lost:
one run at a time holds its lock, a folder that holds a run is continued (``resume``) or started
over (``force``), never overwritten silently, and a resumed run repairs the manifest and clears
what an interrupted one left half-written. Under torchrun, rank 0 writes each step before the
others read it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from cptlab.core.config import ConfigError, LabConfig
from cptlab.core.distributed import barrier, is_main
from cptlab.core.results import STEP_FILES, read_step, update_manifest
from cptlab.data.corpus import replay_counts
from cptlab.lab import steps
from cptlab.lab.study import run_study
from cptlab.model.measure import config_of

LOCK = ".cptlab.lock"


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked; the message says what to do."""


class RunFinished(Exception):
    """``resume`` on a run that has nothing left to do."""


@contextlib.contextmanager
def locked(run_dir: Path):
    """An exclusive lock on the run folder for as long as a run writes to it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunFolderError(
            f"{run_dir} is in use by another cptlab run ({holder}): wait for it, or use another --out"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def clear_leftovers(run_dir: Path) -> None:
    """Half-written files an interrupted run left: temporary results and model folders."""
    for p in list(run_dir.glob(".*.tmp")) + list(run_dir.glob("corpus/.*.tmp.npy")) + list(run_dir.glob("models/.*")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def start_over(run_dir: Path) -> None:
    for name in [*STEP_FILES.values(), "manifest.json"]:
        (run_dir / name).unlink(missing_ok=True)
    for sub in ("corpus", "models", "checkpoints", "plots"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def run_all(
    cfg: LabConfig,
    run_dir: str | Path,
    progress: bool = True,
    study: bool = True,
    resume: bool = False,
    force: bool = False,
    schedules: dict[float, list[int]] | None = None,
) -> dict:
    """All four steps. A folder that already holds a run needs ``resume`` (keep the steps done
    with this same configuration, continue an interrupted CPT run from its checkpoint) or
    ``force`` (start over). ``schedules``: the replay windows of each step, per fraction, that
    another run used (``grade --retrain`` repeats a learner's own schedule; else the reference's)."""
    run_dir = Path(run_dir)
    holds_run = (run_dir / STEP_FILES[1]).exists()
    if holds_run and not (resume or force):
        raise RunFolderError(
            f"{run_dir} already holds a run: --resume continues it, --force starts it over, or pass another --out"
        )
    with locked(run_dir) if is_main() else contextlib.nullcontext():
        if force and is_main():
            start_over(run_dir)
            holds_run = False
        barrier()
        if holds_run and config_of(run_dir) != cfg:
            raise RunFolderError(
                f"{run_dir} holds a run with another configuration: resume it with the same options, "
                f"--force to start over, or use a new --out"
            )
        if holds_run and is_main():
            clear_leftovers(run_dir)
            update_manifest(run_dir)  # a kill between a results file and its manifest update is repaired here
        done = {n: holds_run and (run_dir / f).exists() for n, f in STEP_FILES.items()}
        if done[4] and (not study or "study" in read_step(run_dir, 4)):
            raise RunFinished(f"{run_dir} is finished: nothing to resume (--force starts it over)")
        if not done[1]:
            steps.run_step1(cfg, run_dir, progress)
        barrier()
        if not done[2]:
            steps.run_step2(run_dir)
        barrier()
        if not done[3]:
            steps.run_step3(run_dir, progress, resume=resume)
        barrier()
        out = steps.run_step4(run_dir, progress) if not done[4] else read_step(run_dir, 4)
        barrier()
        if study:
            schedule = (
                (lambda f, w, n: schedules[f] if f in schedules else replay_counts(f, w, n)) if schedules else None
            )
            out["study"] = run_study(run_dir, progress, schedule_fn=schedule)
        barrier()
    return out
