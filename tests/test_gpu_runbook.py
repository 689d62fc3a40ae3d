"""The GPU runbook (`benchmarks/gpu.sh`) on a machine without a GPU: its dry run says what it would
run and runs nothing; its record (`benchmarks/gpu_report.py`) carries the device and the date and
puts each figure beside its target; the README's GPU section is the last record, regenerated."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)


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
    steps = (
        "nvidia-smi",
        "gpu_report.py lab gpt2",
        "gpu_report.py lab tiny",
        "check_fused_compile.py",
        "gpu_throughput",
        "gpu_report.py report",
    )
    for step in steps:
        assert step in done.stdout, step
    assert not out.exists()  # nothing written, nothing run


def _fake_out(out: Path) -> Path:
    out.mkdir()
    (out / "gpu.txt").write_text(
        "name, memory.total [MiB], driver_version\nNVIDIA H100 80GB HBM3, 81559 MiB, 550.54\n"
        "torch 2.11.0 transformers 5.17.0 NVIDIA H100 80GB HBM3\n"
    )
    lab = {"preset": "gpt2", "exit_code": 0, "wall_s": 171.4, "points": 88, "max_points": 88, "step_seconds": {}}
    (out / "lab-gpt2.json").write_text(json.dumps(lab))
    rows = {"cptlab_eager": {"tokens_per_s": 250_000.0, "mfu": 0.2}, "hf_trainer_default": {"tokens_per_s": 46_000}}
    (out / "throughput.txt").write_text("compiling...\n" + "\n".join(json.dumps({k: v}) for k, v in rows.items()))
    with (out / "throughput.txt").open("a") as fh:
        fh.write("\n" + json.dumps({"device": "NVIDIA H100 80GB HBM3", **rows}) + "\n")
    return out


def test_the_record_names_device_and_date_and_sets_each_figure_beside_its_target(tmp_path):
    record = gpu_report.report(_fake_out(tmp_path / "out"))
    assert record["device"] == "NVIDIA H100 80GB HBM3" and len(record["date"]) == 10
    assert json.loads((tmp_path / "out" / "gpu.json").read_text()) == record
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert md.startswith(f"Measured on one NVIDIA H100 80GB HBM3 on {record['date']}")
    assert "| whole `gpt2` lab (four notebooks, graded) | 171 s, 88/88 points | under 180 s |" in md
    assert "| CPT loop, eager (GPT-2 124M, 64x256 tokens a step) | 250k tokens/s, MFU 20% | MFU 35% |" in md
    assert "46k tokens/s" in md


def test_the_readme_gpu_section_is_the_last_record(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    gpu_report.write_readme(gpu_report.LAST, readme)
    assert readme.read_text() == (ROOT / "README.md").read_text(), (
        "README's GPU section is out of date: python benchmarks/gpu_report.py readme"
    )
    last = json.loads(gpu_report.LAST.read_text())
    assert f"Measured on one {last['device']} on {last['date']}" in readme.read_text()


@pytest.mark.slow
def test_a_timed_lab_is_graded_from_its_run_folder(tmp_path, monkeypatch, lab_run):
    """``gpu_report.py lab``: the lab's own command stands in (a finished smoke run), the grade is real."""
    real = subprocess.run

    def fake_run(cmd, **kw):
        if cmd[1:4] == ["-m", "cptlab", "lab"]:
            runs = Path(cmd[cmd.index("--runs") + 1])
            runs.mkdir(parents=True)
            (runs / "latest").symlink_to(lab_run)
            return subprocess.CompletedProcess(cmd, 0)
        return real(cmd, **kw)

    monkeypatch.setattr(gpu_report.subprocess, "run", fake_run)
    row = gpu_report.run_lab("smoke", tmp_path)
    assert row["exit_code"] == 0 and row["points"] == row["max_points"] > 0, row
    assert set(row["step_seconds"]) == {"step1_baseline", "step3_cpt"}
    assert json.loads((tmp_path / "lab-smoke.json").read_text()) == row
    assert sys.executable  # the lab and the grade run with this interpreter
