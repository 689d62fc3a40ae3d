"""``python -m checkers grade RUN_DIR [RUN_DIR ...] [--csv FILE] [--json FILE]``.

A table per run and step, a gradebook with one row per run folder, exit status 1 when any check
fails. Grading reads JSON only: it never executes learner code and never unpickles anything.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from .steps import check_all


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def grade(run_dirs: list[str], verify: bool = False) -> tuple[list[dict], str]:
    rows, out = [], io.StringIO()
    for run in run_dirs:
        reports = check_all(run)
        if verify:
            from .verify import verify as verify_run

            reports.append(verify_run(run))
        out.write(f"\n== {run} (preset {next((r.preset for r in reports if r.preset), 'unknown')})\n")
        out.write(f"{'step':<28}{'points':>10}  status\n")
        for r in reports:
            status = "pass" if r.passed else "FAIL: " + ", ".join(c.id for c in r.failures)
            out.write(f"{r.step}. {r.title:<25}{r.points:>5g}/{r.max_points:<4g}  {status}\n")
        for r in reports:
            for c in r.failures:
                out.write(f"   {c.id}: expected {c.expected}; got {c.got}\n")
        total = sum(r.points for r in reports)
        total_max = sum(r.max_points for r in reports)
        out.write(f"{'total':<28}{total:>5g}/{total_max:<4g}\n")
        rows.append({
            "run_dir": str(run),
            "preset": next((r.preset for r in reports if r.preset), None),
            **{f"step{r.step}_points": r.points for r in reports},
            **{f"step{r.step}_max": r.max_points for r in reports},
            "total": total,
            "max": total_max,
            "passed": all(r.passed for r in reports),
            "failed_checks": " ".join(c.id for r in reports for c in r.failures),
            "reports": [r.to_dict() for r in reports],
        })
    return rows, out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checkers", description="Grade lab run folders.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="check every step of each run folder; exit 1 if any check fails")
    g.add_argument("run_dirs", nargs="+")
    g.add_argument("--csv", help="write the gradebook (one row per run folder) as CSV")
    g.add_argument("--json", help="write the gradebook with every check as JSON")
    g.add_argument("--verify", action="store_true",
                   help="also re-hash the run's files and re-evaluate its saved models under the recorded protocol")
    args = p.parse_args(argv)

    rows, text = grade(args.run_dirs, verify=args.verify)
    print(text.strip("\n"))
    print(f"\n{sum(r['passed'] for r in rows)}/{len(rows)} run(s) passed every check")
    if args.csv:
        buf = io.StringIO()
        fields = [k for k in rows[0] if k != "reports"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        _write_atomic(Path(args.csv), buf.getvalue())
    if args.json:
        _write_atomic(Path(args.json), json.dumps(rows, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
