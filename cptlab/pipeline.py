"""All four steps and the study in one call: what ``cptlab run`` does. Under torchrun, rank 0
writes each step before the others read it."""
from __future__ import annotations

from pathlib import Path

from . import lab
from .config import LabConfig
from .distributed import barrier
from .measure import config_of
from .results import STEP_FILES
from .tradeoff import run_study


def run_all(cfg: LabConfig, run_dir: str | Path, progress: bool = True, study: bool = True, resume: bool = False) -> dict:
    """All four steps. With ``resume``, steps already done in ``run_dir`` (with this same
    configuration) are kept and an interrupted CPT run continues from its last checkpoint."""
    done = resume and (Path(run_dir) / STEP_FILES[1]).exists()
    if done and config_of(run_dir) != cfg:
        raise ValueError(f"{run_dir} holds a run with another configuration: resume it with the same options, or use a new --out")
    if not done:
        lab.run_step1(cfg, run_dir, progress)
    barrier()
    if not (resume and (Path(run_dir) / STEP_FILES[2]).exists()):
        lab.run_step2(run_dir)
    barrier()
    lab.run_step3(run_dir, progress, resume=resume)
    barrier()
    out = lab.run_step4(run_dir, progress)
    barrier()
    if study:
        out["study"] = run_study(run_dir, progress)
    barrier()
    return out
