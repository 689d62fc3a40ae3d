"""Data parallelism, shown on the learner's own run (notebook 3): the same CPT loop in one process
and under ``torchrun --nproc_per_node 2`` (NCCL with a GPU per process, gloo on CPUs), from the base
model on step 2's blocks. Both processes draw the same global batch from the same seeded generator
and each trains on its half; DistributedDataParallel averages their gradients, so each step's loss
is the one-process loss. fp32 and dropout off (GPT-2's config has 0.1, and each rank would draw its own
masks), so the two agree to float rounding: the only difference left is the order the gradients are summed.

``python -m cptlab.lab.ddp RUN_DIR STEPS DEVICE OUT`` is the worker torchrun starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cptlab.core.distributed import init_from_env, is_main, world_size
from cptlab.core.files import write_atomic
from cptlab.core.results import read_step
from cptlab.model.measure import StepSetup, config_of, run_corpus
from cptlab.model.train import train

PROCESSES = 2


def _device_kind() -> str:
    """NCCL needs a GPU per process; with fewer, the demonstration runs on CPUs with gloo."""
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= PROCESSES else "cpu"


def without_dropout(model):
    """Every dropout probability set to 0: with dropout (GPT-2: 0.1) each rank draws its own masks, so two
    processes would train on other masks than one and their losses differ by more than rounding."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def worker(run_dir: str, steps: int, device: str, out: str | None = None) -> dict:
    """``steps`` steps of the recipe from the base model (fp32, dropout off, warm-up of 1); rank 0 writes
    ``out``."""
    init_from_env()
    cfg = config_of(run_dir).replace(
        max_steps=steps, warmup_steps=1, precision="fp32", device=device, grad_accum=1, torch_compile=False
    )
    s = StepSetup(cfg, read_step(run_dir, 1)["base_model"])
    blocks, _ = run_corpus(run_dir)
    t0 = time.perf_counter()
    res = train(without_dropout(s.model()), blocks, cfg, s.device, None, progress=False)
    record = {
        "processes": world_size(),
        "backend": "nccl" if s.device.type == "cuda" and world_size() > 1 else "gloo" if world_size() > 1 else "none",
        "device": s.device.type,
        "batch_per_process": cfg.batch_size // world_size(),
        "dropout": "off",
        "log": res.log,
        "seconds": time.perf_counter() - t0,
    }
    if out is not None and is_main():
        write_atomic(Path(out), json.dumps(record))
    return record


def two_processes(run_dir: str | Path, steps: int = 4) -> dict:
    """The loop in one process, then in two under torchrun; each step's loss side by side."""
    run = Path(run_dir)
    cfg = config_of(run)
    if cfg.batch_size < PROCESSES:
        raise ValueError(f"batch_size={cfg.batch_size}: two processes need at least {PROCESSES} windows a step")
    kind = _device_kind()
    one = worker(str(run), steps, kind)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // PROCESSES))}
    out = run / "ddp_two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}"]
    cmd += ["-m", "cptlab.lab.ddp", str(run), str(steps), kind, str(out)]
    t0 = time.perf_counter()
    # its own session: torchrun signals its process group as it ends, which must not reach a notebook's kernel
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError("torchrun ran past 10 minutes: stopped") from None
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {err.strip()[-600:]}")
    two = json.loads(out.read_text())
    two["wall_seconds"] = time.perf_counter() - t0
    rows = [
        {"step": a["step"], "one": a["loss"], "two": b["loss"], "difference": b["loss"] - a["loss"]}
        for a, b in zip(one["log"], two["log"])
    ]
    result = {"one": one, "two": two, "rows": rows, "max_difference": max(abs(r["difference"]) for r in rows)}
    write_atomic(run / "ddp.json", json.dumps(result))
    return result


def ddp_table(result: dict) -> str:
    one, two = result["one"], result["two"]
    lines = [
        f"one process: {one['batch_per_process']} windows a step; {two['processes']} processes ({two['backend']}, "
        f"{two['device']}): {two['batch_per_process']} windows each, gradients averaged by DDP; fp32, dropout off in "
        "both (the CPT run itself keeps the model's dropout)",
        f"{'step':>4}  {'loss, 1 process':>16}  {'loss, 2 processes':>18}  {'difference':>11}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['step']:>4}  {r['one']:>16.6f}  {r['two']:>18.6f}  {r['difference']:>+11.1e}")
    lines.append(
        f"largest difference {result['max_difference']:.1e}: the same run, to float rounding (the two processes "
        "sum their halves' gradients in another order)"
    )
    lines.append(
        f"time: {one['seconds']:.1f} s in one process, {two['seconds']:.1f} s in two ({two['wall_seconds']:.1f} s "
        "with torchrun's start-up); on one machine's CPU cores two processes share the same cores"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
