"""The run folder and its JSON results files: the contract between notebooks, checkers and CLI."""

from __future__ import annotations

import errno
import importlib.metadata as md
import json
import math
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cptlab.core.distributed import is_main
from cptlab.core.files import sha256_file, write_atomic


@dataclass(frozen=True)
class Step:
    """The contract of one step: the results file it writes, the notebook that runs it, its title."""

    file: str
    notebook: str
    title: str


STEPS = {
    1: Step("step1_baseline.json", "01_baseline.ipynb", "baseline perplexity"),
    2: Step("step2_corpus.json", "02_corpus.ipynb", "the CPT corpus"),
    3: Step("step3_cpt.json", "03_cpt.ipynb", "the CPT run"),
    4: Step("step4_tradeoff.json", "04_tradeoff.ipynb", "the trade-off"),
}
STEP_FILES = {n: s.file for n, s in STEPS.items()}
STEP_NOTEBOOKS = {n: s.notebook for n, s in STEPS.items()}
STEP_TITLES = {n: s.title for n, s in STEPS.items()}


class MissingStepError(FileNotFoundError):
    """A step's results are not in the run folder yet."""


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as strings so that a reader sees them, not a parse error."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _json_safe(obj.item())
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Results as JSON, written atomically (``files.atomic_path``); a failed write says what to do."""
    path = Path(path)
    if not is_main():  # under torchrun only rank 0 writes results
        return path
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise OSError(exc.errno, disk_message(path.parent, exc)) from None
    return path


def disk_message(folder: Path, exc: OSError) -> str:
    """What to do when a run folder cannot be written: full disk, read-only or forbidden folder."""
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(folder).free
        return (
            f"the disk holding {folder} is full ({free / 2**20:.0f} MB free): free space or use another --out, "
            "then --resume"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{folder} cannot be written ({os.strerror(exc.errno)}): pass an --out you can write to"
    return f"writing in {folder} failed: {exc.strerror or exc}"


def write_step(run_dir: str | os.PathLike, step: int, obj: dict) -> Path:
    path = write_json_atomic(Path(run_dir) / STEP_FILES[step], obj)
    update_manifest(run_dir)
    return path


def update_manifest(run_dir: str | os.PathLike) -> Path:
    """``manifest.json``: sha256 of every results file and model file of the run, and the run id.
    A grader re-hashes them: an edited number or a swapped model folder no longer matches."""
    run = Path(run_dir)
    files = (
        sorted(run.glob("step*_*.json"))
        + sorted((run / "corpus").glob("*.npy"))
        + sorted((run / "models").glob("*/*.safetensors"))
        + sorted((run / "models").glob("*/config.json"))
    )
    files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(run).parts)]
    run_id = None
    s1 = run / STEP_FILES[1]
    if s1.exists():
        run_id = json.loads(s1.read_text()).get("run_id")
    manifest = {"run_id": run_id, "files": {str(f.relative_to(run)): sha256_file(f) for f in files}}
    return write_json_atomic(run / "manifest.json", manifest)


def read_step(run_dir: str | os.PathLike, step: int) -> dict:
    path = Path(run_dir) / STEP_FILES[step]
    if not path.exists():
        raise MissingStepError(
            f"{path} does not exist: run step {step} first (notebooks/{STEP_NOTEBOOKS[step]} "
            f"or `cptlab run --out {run_dir}`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); re-run step {step} (notebooks/{STEP_NOTEBOOKS[step]})"
        ) from None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "datasets", "numpy", "cptlab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
