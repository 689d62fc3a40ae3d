"""Seconds per learner of ``grade-class`` at several ``--jobs``, on a class of solution notebooks.

    python benchmarks/grade_class_speed.py --preset smoke --learners 4 --jobs 1 2 4 --track core full \
        --out benchmarks/grade_class_speed.json

Each configuration grades the same class from scratch (the base model is built before the clock
starts). Two figures: wall seconds for the whole class divided by its learners (what an instructor
waits), and core-minutes per learner, the CPU time of the grader and every process it starts
(what a class costs on a machine of any size: 1,000 learners in an hour on 64 cores needs <= 3.84),
read off the whole machine's busy time, so nothing else may run beside it.
Where one learner's re-execution spends its time goes beside them: the executed notebooks' cell
times, by notebook. Every learner must score every automatic point of the graded track, or the
figures are not reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from checkers.core.questions import GRADED_TRACKS, track_points
from checkers.grading.classroom import grade_class
from cptlab.cli import quiet_libraries
from cptlab.core.config import get_config
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.model.measure import resolve_base_model
from cptlab.notebook.execute import SOLUTION_DIR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--learners", type=int, default=4)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--track", nargs="+", default=["core", "full"], choices=("core", "full"))
    p.add_argument("--out", default=None, help="a JSON file to add this preset's rows to")
    args = p.parse_args()
    quiet_libraries()  # a base model built here prints no loading bars into the log
    resolve_base_model(get_config(args.preset), progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cptlab-class-") as tmp:
        sub = Path(tmp) / "submissions"
        for i in range(args.learners):
            (sub / f"learner{i:02d}").mkdir(parents=True)
            for name in STEP_NOTEBOOKS.values():
                shutil.copy2(SOLUTION_DIR / name, sub / f"learner{i:02d}" / name)
        for track in args.track:
            full = sum(track_points(t, "auto") for t in GRADED_TRACKS[track])
            for jobs in args.jobs:
                out = Path(tmp) / f"grades-{track}-{jobs}"
                t0, cpu0 = time.perf_counter(), _cpu_seconds()
                results = grade_class(sub, args.preset, out, jobs=jobs, timeout=1800, track=track)
                secs, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
                ok = all(r.auto_total == full for r in results)
                for r in (r for r in results if r.auto_total != full):  # its figures are not reported: say why
                    print(f"{r.learner}: {r.auto_total:g} of {full:g} points: {r.points}", flush=True)
                    for rep in r.reports:
                        for c in rep.get("checks", []):
                            if not c["passed"]:
                                print(f"{r.learner} {rep.get('question')}: {c['id']}: {c['got']}", flush=True)
                row = {
                    "preset": args.preset,
                    "track": track,
                    "jobs": jobs,
                    "learners": len(results),
                    "seconds": round(secs, 1),
                    "seconds_per_learner": round(secs / len(results), 1) if ok else None,
                    "core_minutes_per_learner": round(cpu / 60 / len(results), 2) if ok else None,
                    "all_automatic_points": ok,
                    "cell_seconds_by_notebook": _cell_seconds(out / "runs" / "learner00"),
                    "date": time.strftime("%Y-%m-%d"),
                    "commit": _commit(),
                    "machine": _machine(),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out:
        path = Path(args.out)
        data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
        done = {(r["preset"], r["track"], r["jobs"]) for r in rows}
        # rows from before grading by track (no "track") measured another grader: dropped
        data["rows"] = [r for r in data["rows"] if r.get("track") and (r["preset"], r["track"], r["jobs"]) not in done]
        data["rows"] += rows
        data.pop("machine", None)  # each row says its own: rows of several machines share the file
        data["date"] = time.strftime("%Y-%m-%d")
        path.write_text(json.dumps(data, indent=2) + "\n")


def _commit() -> str | None:
    """The project's commit the row measured (rows of several runs share the file)."""
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True)
    return done.stdout.decode().strip() or None


def _machine() -> str:
    """The CPU a row was measured on: its model, its cores, and whether it has native bf16 (AVX512-BF16,
    which roughly halves a `tiny` run's training time against fp32)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    bf16 = "native bf16" if "avx512_bf16" in info else "no native bf16"
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {bf16}"


def _cpu_seconds() -> float:
    """The machine's busy CPU seconds so far, every process's (``/proc/stat``): the grader's learners
    run in sandboxes whose processes its own rusage does not see, so the class's cost is read off the
    whole machine, with nothing else running."""
    fields = open("/proc/stat").readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cell_seconds(run: Path) -> dict[str, float]:
    """Seconds of the executed cells of one learner's notebooks (nbclient's timestamps)."""
    from datetime import datetime

    import nbformat

    out = {}
    for path in sorted(run.glob("0*.ipynb")):
        total = 0.0
        for cell in nbformat.read(path, as_version=4).cells:
            ex = cell.get("metadata", {}).get("execution", {})
            a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
            if a and b:
                total += (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
        out[path.name] = round(total, 1)
    return out


if __name__ == "__main__":
    main()
