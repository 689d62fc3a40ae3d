"""Execute the four step notebooks headless, in order, into a run folder (the lab's main job)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .results import STEP_NOTEBOOKS

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def inject_parameters(nb, params: dict) -> None:
    """Papermill's convention: a cell tagged ``injected-parameters`` right after the ``parameters`` cell."""
    from nbformat.v4 import new_code_cell

    src = "# Injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    idx = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if idx is None:
        raise ValueError("notebook has no cell tagged 'parameters'")
    nb.cells.insert(idx + 1, cell)


def execute_notebook(src: Path, dst: Path, params: dict, timeout: int = 3600) -> float:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(src, as_version=4)
    inject_parameters(nb, params)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        nbformat.write(nb, dst)  # keep what ran, with the error, for the learner to read
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise RuntimeError(f"notebooks/{src.name} stopped with an error: {lines[-1] if lines else exc}\n"
                           f"  the executed notebook, with the failing cell, is at {dst}") from None
    nbformat.write(nb, dst)
    return time.perf_counter() - t0


def new_run_dir(runs: Path, preset: str) -> Path:
    runs.mkdir(parents=True, exist_ok=True)
    run = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    run.mkdir()
    latest = runs / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run.name)
    return run


def run_lab(preset: str = "tiny", runs: str | Path = "runs", seed: int = 1234, overrides: dict | None = None,
            run_dir: str | Path | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Path(run_dir) if run_dir else new_run_dir(Path(runs), preset)
    run.mkdir(parents=True, exist_ok=True)
    run = run.resolve()
    params = {"PRESET": preset, "RUN_DIR": str(run), "SEED": seed, "OVERRIDES": overrides or {}}
    for step in (1, 2, 3, 4):
        name = STEP_NOTEBOOKS[step]
        print(f"[lab] step {step}: executing notebooks/{name} ...", flush=True)
        secs = execute_notebook(notebook_dir / name, run / name, params)
        print(f"[lab] step {step}: done in {secs:.0f} s -> {run / name}", flush=True)
    return run
