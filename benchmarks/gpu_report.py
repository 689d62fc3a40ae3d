"""The GPU runbook's record (``benchmarks/gpu.sh``): one JSON and one markdown table per run, with
the device and the date, and the README's GPU section generated from the last one kept.

    python benchmarks/gpu_report.py lab PRESET OUT     run `cptlab lab --preset PRESET`, timed and graded
    python benchmarks/gpu_report.py report OUT         OUT/gpu.json and OUT/gpu.md from what gpu.sh wrote
    python benchmarks/gpu_report.py readme [JSON]      README's GPU section from JSON (benchmarks/gpu_last.json)

Targets the table reports against: the whole gpt2 lab's compute under 3 minutes on an H100-class
GPU, and training at 35% or more of the GPU's bf16 peak (model FLOPs utilisation).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAST = ROOT / "benchmarks" / "gpu_last.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- gpu-figures: begin (python benchmarks/gpu_report.py readme) -->", "<!-- gpu-figures: end -->"
LAB_TARGET_S, MFU_TARGET = 180.0, 0.35


def run_lab(preset: str, out: Path) -> dict:
    """The whole lab as ``make lab`` runs it (four notebooks, then the grade), timed."""
    runs = out / f"runs-{preset}"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cptlab", "lab", "--preset", preset, "--runs", str(runs)])
    wall = time.perf_counter() - t0
    run = (runs / "latest").resolve()
    row: dict = {"preset": preset, "exit_code": done.returncode, "wall_s": round(wall, 1), "run": str(run)}
    steps = {}
    for name, key in (("step1_baseline", "seconds"), ("step3_cpt", "seconds")):
        f = run / f"{name}.json"
        if f.is_file():
            steps[name] = round(json.loads(f.read_text()).get(key, 0.0), 1)
    row["step_seconds"] = steps
    graded = subprocess.run(
        [sys.executable, "-m", "checkers", "grade", str(run), "--json", str(out / f"grades-{preset}.json")],
        capture_output=True,
        text=True,
    )
    if (out / f"grades-{preset}.json").is_file():
        g = json.loads((out / f"grades-{preset}.json").read_text())[0]
        row["points"], row["max_points"], row["failed_checks"] = g["total"], g["max"], g["failed_checks"]
    else:
        row["grade_error"] = graded.stderr.strip().splitlines()[-1:] or ["no grades written"]
    (out / f"lab-{preset}.json").write_text(json.dumps(row, indent=1))
    return row


def _last_json_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def report(out: Path) -> dict:
    gpu = (out / "gpu.txt").read_text().splitlines() if (out / "gpu.txt").is_file() else []
    device = gpu[1].split(",")[0].strip() if len(gpu) > 1 else "unknown"
    record = {
        "device": device,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "software": gpu[2].strip() if len(gpu) > 2 else "",
        "labs": [json.loads(f.read_text()) for f in sorted(out.glob("lab-*.json"))],
        "throughput": _last_json_line(out / "throughput.txt"),
    }
    (out / "gpu.json").write_text(json.dumps(record, indent=1))
    (out / "gpu.md").write_text(markdown(record))
    return record


def markdown(r: dict) -> str:
    """The table a person reads: device and date first, each figure beside its target."""
    lines = [
        f"Measured on one {r['device']} on {r['date']} "
        f"(`bash benchmarks/gpu.sh`; {r.get('software') or 'versions not recorded'}).",
        "",
        "| what | measured | target |",
        "|---|---|---|",
    ]
    for lab in r.get("labs", []):
        target = f"under {LAB_TARGET_S:.0f} s" if lab["preset"] == "gpt2" else ""
        points = f", {lab['points']:g}/{lab['max_points']:g} points" if "points" in lab else ", not graded"
        status = "" if lab.get("exit_code", 0) == 0 else f" (exit {lab['exit_code']})"
        how = lab.get("how", "four notebooks, graded")
        lines.append(f"| whole `{lab['preset']}` lab ({how}) | {lab['wall_s']:.0f} s{points}{status} | {target} |")
    for name in r.get("missing_labs", []):
        lines.append(
            f"| whole `{name}` lab (four notebooks, graded) | not run on this device | under {LAB_TARGET_S:.0f} s |"
        )
    t = r.get("throughput") or {}
    for key, label in (("cptlab_eager", "CPT loop, eager"), ("cptlab_compiled", "CPT loop, compiled")):
        row = t.get(key)
        if row and row.get("tokens_per_s"):
            mfu = f", MFU {row['mfu']:.0%}" if row.get("mfu") is not None else ""
            lines.append(
                f"| {label} (GPT-2 124M, 64x256 tokens a step) | {row['tokens_per_s'] / 1e3:.0f}k tokens/s{mfu} "
                f"| MFU {MFU_TARGET:.0%} |"
            )
    if t.get("hf_trainer_default"):
        lines.append(
            f"| default `transformers.Trainer` (fp32) | {t['hf_trainer_default']['tokens_per_s'] / 1e3:.0f}k tokens/s "
            "| |"
        )
    notes = r.get("notes", [])
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def write_readme(record_path: Path = LAST, readme: Path = README) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers to write between")
    body = markdown(json.loads(record_path.read_text()))
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{body}{END}", text, flags=re.S)
    readme.write_text(new)


def main(argv: list[str]) -> None:
    if argv[:1] == ["lab"] and len(argv) == 3:
        print(json.dumps(run_lab(argv[1], Path(argv[2]))))
    elif argv[:1] == ["report"] and len(argv) == 2:
        print(markdown(report(Path(argv[1]))))
    elif argv[:1] == ["readme"]:
        write_readme(Path(argv[1]) if len(argv) > 1 else LAST)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
