"""The spread of the headline numbers over learner seeds: what the graders' thresholds must hold
for every seed. Each seed changes the validation split and the training order; the base model is
the same for everyone. Writes a JSON file and prints min / median / max.

    python benchmarks/seed_spread.py --preset tiny --learners 10 --out seed_spread_tiny.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from checkers.classroom import learner_seed
from cptlab.config import get_config
from cptlab.pipeline import run_all
from cptlab.results import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--learners", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    for i in range(1, args.learners + 1):
        learner = f"learner-{i:02d}"
        seed = learner_seed(learner)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            s4 = run_all(get_config(args.preset, seed=seed), Path(tmp) / "run", progress=False, study=False)
        rows.append({"learner": learner, "seed": seed, "code_ppl_drop": s4["code_ppl_drop"],
                     "forgetting_ratio": s4["forgetting_ratio"], "baseline_code_ppl": s4["baseline_code_ppl"],
                     "adapted_code_ppl": s4["adapted_code_ppl"], "seconds": time.perf_counter() - t0})
        print(f"{learner} seed {seed}: drop {100 * s4['code_ppl_drop']:.1f}%, forgetting {s4['forgetting_ratio']:.4f}", flush=True)
    summary = {}
    for key in ("code_ppl_drop", "forgetting_ratio"):
        vals = [r[key] for r in rows]
        summary[key] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        print(f"{key}: min {min(vals):.4f}, median {statistics.median(vals):.4f}, max {max(vals):.4f}")
    if args.out:
        write_json_atomic(args.out, {"preset": args.preset, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
