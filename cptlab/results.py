"""The run folder and its JSON results files: the contract between notebooks, checkers and CLI."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

STEP_FILES = {
    1: "step1_baseline.json",
    2: "step2_corpus.json",
    3: "step3_cpt.json",
    4: "step4_tradeoff.json",
}
STEP_NOTEBOOKS = {1: "01_baseline.ipynb", 2: "02_corpus.ipynb", 3: "03_cpt.ipynb", 4: "04_tradeoff.ipynb"}
STEP_TITLES = {1: "baseline perplexity", 2: "the CPT corpus", 3: "the CPT run", 4: "the trade-off"}


class MissingStepError(FileNotFoundError):
    """A step's results are not in the run folder yet."""


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as strings so that a reader sees them, not a parse error."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    from .distributed import is_main

    if not is_main():  # under torchrun only rank 0 writes results
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_clean(obj), fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_step(run_dir: str | os.PathLike, step: int, obj: dict) -> Path:
    path = write_json_atomic(Path(run_dir) / STEP_FILES[step], obj)
    update_manifest(run_dir)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update_manifest(run_dir: str | os.PathLike) -> Path:
    """``manifest.json``: sha256 of every results file and model file of the run, and the run id.
    A grader re-hashes them: an edited number or a swapped model folder no longer matches."""
    run = Path(run_dir)
    files = (sorted(run.glob("step*_*.json")) + sorted((run / "corpus").glob("*.npy"))
             + sorted((run / "models").glob("*/*.safetensors")) + sorted((run / "models").glob("*/config.json")))
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
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run step {step} (notebooks/{STEP_NOTEBOOKS[step]})") from None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "datasets", "numpy", "cptlab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
