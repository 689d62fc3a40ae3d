"""The spread of the headline numbers over seeds, against their intervals: what the graders'
thresholds must hold for every seed, and whether the seed moves the code drop more than its 95%
interval suggests. A seed orders the training batches; the validation split is the preset's
(``split_seed``) and the base model is the same for everyone. Writes a JSON file and prints
min / median / max and the median interval width.

    python benchmarks/seed_spread.py --preset tiny --seeds 1 2 3 4 1234 --out benchmarks/seed_spread_tiny.json
    python benchmarks/seed_spread.py --preset smoke --learners 10 --out benchmarks/seed_spread_smoke.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from checkers.grading.classroom import learner_seed
from cptlab.core.config import get_config
from cptlab.core.results import write_json_atomic
from cptlab.core.uncertainty import describe
from cptlab.lab.pipeline import run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--learners", type=int, default=10, help="seeds of learner-01.. as grade-class draws them")
    p.add_argument("--seeds", type=int, nargs="*", help="these seeds instead of the learners'")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    runs = (
        [(f"seed-{s}", s) for s in args.seeds]
        if args.seeds
        else [(f"learner-{i:02d}", learner_seed(f"learner-{i:02d}")) for i in range(1, args.learners + 1)]
    )
    for learner, seed in runs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            s4 = run_all(get_config(args.preset, seed=seed), Path(tmp) / "run", progress=False, study=False)
        rows.append(
            {
                "learner": learner,
                "seed": seed,
                "code_ppl_drop": s4["code_ppl_drop"],
                "forgetting_ratio": s4["forgetting_ratio"],
                "baseline_code_ppl": s4["baseline_code_ppl"],
                "adapted_code_ppl": s4["adapted_code_ppl"],
                "code_ppl_drop_ci": s4["code_ppl_drop_ci"],
                "forgetting_ratio_ci": s4["forgetting_ratio_ci"],
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"{learner} seed {seed}: drop {describe(s4['code_ppl_drop_ci'], percent=True)}, "
            f"forgetting {describe(s4['forgetting_ratio_ci'])}",
            flush=True,
        )
    summary = {}
    for key in ("code_ppl_drop", "forgetting_ratio"):
        vals = [r[key] for r in rows]
        width = statistics.median(r[f"{key}_ci"]["high"] - r[f"{key}_ci"]["low"] for r in rows)
        summary[key] = {
            "min": min(vals),
            "median": statistics.median(vals),
            "max": max(vals),
            "spread": max(vals) - min(vals),
            "median_interval_width": width,
            "spread_within_interval": max(vals) - min(vals) <= width,
        }
        print(
            f"{key}: min {min(vals):.4f}, median {statistics.median(vals):.4f}, max {max(vals):.4f}; "
            f"spread {max(vals) - min(vals):.4f} against a median 95% interval width of {width:.4f}"
        )
    if args.out:
        write_json_atomic(args.out, {"preset": args.preset, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
