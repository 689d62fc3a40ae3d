"""`benchmarks/gpu.sh --dry-run` on a machine without a GPU: says what it would run, runs nothing."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_lists_every_step_and_runs_none(tmp_path):
    out = tmp_path / "gpu-out"
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run"],
        cwd=ROOT,
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    steps = ("nvidia-smi", "cptlab run --preset tiny", "checkers grade", "check_fused_compile.py", "gpu_throughput")
    for step in steps:
        assert step in done.stdout, step
    assert not out.exists()  # nothing written, nothing run
