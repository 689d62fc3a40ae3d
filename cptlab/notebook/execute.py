"""Execute the four step notebooks headless, in order, into a run folder (the lab's main job)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
from papermill.exceptions import PapermillExecutionError

from cptlab.core.files import link_atomic
from cptlab.core.progress import HEADLESS, TERMINAL
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.friendly import STOPPED
from cptlab.notebook.tracks import for_track

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
SOLUTION_DIR = NOTEBOOK_DIR / "solutions"


def execute_notebook(
    src: Path, dst: Path, params: dict, timeout: int | None = 3600, cwd: Path | None = None, track: str = "full"
) -> float:
    """Run ``src`` headless with papermill (parameters injected after the ``parameters`` cell)
    into ``dst``, the cells of ``track`` (cptlab.notebook.tracks); a failing cell leaves ``dst``
    with the error and raises one clear line."""
    t0 = time.perf_counter()
    headless = os.environ.get(HEADLESS)
    os.environ[HEADLESS] = "1"  # the kernel inherits it: text progress bars whose last state, 100%, is saved
    try:
        pm.execute_notebook(
            for_track(nbformat.read(src, as_version=4), track),
            str(dst),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(cwd or src.parent),
            execution_timeout=timeout,
            log_output=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no transport notice on every run
            # the kernel is stopped as soon as its last cell has answered: everything the lab keeps is
            # written (atomically) by then, and a graceful shutdown of a kernel that imported torch and
            # transformers waits 3 s more here
            shutdown_kernel="immediate",
        )
    except PapermillExecutionError as exc:
        raise RuntimeError(
            f"notebooks/{src.name} stopped with an error: {_lab_message(dst) or f'{exc.ename}: {exc.evalue}'}\n"
            f"  the executed notebook, with the failing cell, is at {dst}"
        ) from None
    finally:
        if headless is None:
            os.environ.pop(HEADLESS, None)
        else:
            os.environ[HEADLESS] = headless
    return time.perf_counter() - t0


def _lab_message(executed: Path) -> str | None:
    """The one-line message ``cptlab.notebook.friendly`` printed for a lab error, if a cell shows one."""
    for cell in nbformat.read(executed, as_version=4).cells:
        for out in cell.get("outputs", []):
            lines = out.get("text", "").splitlines() if out.get("output_type") == "stream" else []
            if STOPPED in lines:
                rest = [ln for ln in lines[lines.index(STOPPED) + 1 :] if ln.strip() and not ln.startswith("---")]
                return rest[0] if rest else None
    return None


def new_run_dir(runs: Path, preset: str) -> Path:
    """A new ``runs/<time>-<preset>`` folder (``-2``, ``-3`` ... within the same second), and
    ``runs/latest`` pointing at it, replaced atomically."""
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    for i in range(1, 1000):
        run = runs / (stem if i == 1 else f"{stem}-{i}")
        try:
            run.mkdir()
            break
        except FileExistsError:
            continue
    link_atomic(runs / "latest", run.name)
    return run


def execute_lab(
    preset: str = "tiny",
    runs: str | Path = "runs",
    seed: int = 1234,
    overrides: dict | None = None,
    run_dir: str | Path | None = None,
    notebook_dir: Path = SOLUTION_DIR,
    track: str = "full",
) -> Path:
    """Execute the four notebooks of ``notebook_dir`` (the solutions by default) into a run folder:
    every cell (``full``), or the core's (``core``: Go further's checks and long runs left out)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Path(run_dir) if run_dir else new_run_dir(Path(runs), preset)
    run.mkdir(parents=True, exist_ok=True)
    run = run.resolve()
    # the full track runs Go further's long runs too (the parameters cell's GO_FURTHER, False as handed out)
    params = {
        "PRESET": preset,
        "RUN_DIR": str(run),
        "SEED": seed,
        "OVERRIDES": overrides or {},
        "GO_FURTHER": track == "full",
    }
    before = os.environ.get(TERMINAL)
    os.environ[TERMINAL] = "1"  # the kernels inherit it: their long parts print progress lines here too
    try:
        for step in (1, 2, 3, 4):
            name = STEP_NOTEBOOKS[step]
            shown = notebook_dir / name
            shown = shown.relative_to(NOTEBOOK_DIR.parent) if NOTEBOOK_DIR.parent in shown.parents else shown
            print(f"[lab] step {step}: executing {shown}{' (core track)' if track == 'core' else ''} ...", flush=True)
            secs = execute_notebook(notebook_dir / name, run / name, params, track=track)
            print(f"[lab] step {step}: done in {secs:.0f} s -> {run / name}", flush=True)
    finally:
        if before is None:
            os.environ.pop(TERMINAL, None)
        else:
            os.environ[TERMINAL] = before
    return run


def main(argv: list[str]) -> int:
    """``python -m cptlab.notebook.execute SRC DST PARAMS_JSON``: one notebook, headless, with the grader's
    parameters; the process grade-class runs in its sandbox for each notebook."""
    src, dst, params = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    try:
        execute_notebook(src, dst, params, timeout=None, cwd=Path(params["RUN_DIR"]))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0].split("stopped with an error: ", 1)[-1]
        print(f"error: {first}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
