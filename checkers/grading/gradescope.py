"""A Gradescope autograder: ``python -m checkers gradescope --preset P --track T --out autograder.zip``.

The zip holds what learners receive (``make release``: student notebooks, the library, the checks;
no solution) with ``setup.sh`` and ``run_autograder`` at its root, as Gradescope's autograder
specification asks (gradescope-autograders.readthedocs.io, "Autograder Specifications"): the
harness unpacks it into ``/autograder/source``, runs ``setup.sh`` once to build the image, then for
each submission puts the learner's files in ``/autograder/submission``, runs ``run_autograder``
from ``/autograder`` and reads ``/autograder/results/results.json``.

``setup.sh`` installs the lab (pinned CPU torch where none is importable) and builds the preset's
base model and data, so grading needs no network. ``run_autograder`` finds the step notebooks in the
submission (any folder, any names ``find_notebooks`` recognises), grades them as one learner with
``grade_class`` (the same sandbox, limits and checks as a class on one machine) and writes one test
per question: its points, and the rows the learner would see with each mistake named. The written
questions are 0-point entries that say they are graded by hand (Gradescope's manual questions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from checkers.core.questions import GRADED_TRACKS, QUESTIONS, RUBRIC_MAX
from checkers.grading.find_notebooks import find_notebooks
from cptlab.core.files import write_atomic
from cptlab.core.results import STEP_NOTEBOOKS

ROOT_ENV = "AUTOGRADER_ROOT"  # the harness's /autograder; a test points it at a temp folder
SETTINGS = "cptlab_autograder.json"
SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder's image.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
ROOT="${AUTOGRADER_ROOT:-/autograder}"
export CPTLAB_CACHE="$ROOT/cache"
apt-get install -y -q python3-venv python3-pip >/dev/null 2>&1 || true
python3 -m venv "$ROOT/venv"
# torch pinned to the lab's version; set TORCH_INDEX to a CPU-only wheel index to skip the CUDA libraries
"$ROOT/venv/bin/python" -c "import torch" 2>/dev/null || \\
  "$ROOT/venv/bin/python" -m pip install -q "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
"$ROOT/venv/bin/python" -m pip install -q -e "$SRC"
# the preset's base model and data, built now: grading reads them offline
"$ROOT/venv/bin/python" -m checkers.grading.gradescope setup --settings "$SRC/cptlab_autograder.json"
"""
RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this from /autograder for each submission; it writes results/results.json.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PY="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
export CPTLAB_CACHE="${CPTLAB_CACHE:-$ROOT/cache}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$ROOT"
exec "$PY" -m checkers.grading.gradescope run --root "$ROOT" --settings "$ROOT/source/cptlab_autograder.json"
"""
UPLOAD = (
    "No notebook of the lab was found in your submission. Upload your four step notebooks "
    f"({', '.join(STEP_NOTEBOOKS.values())}), as files or in a folder; each is recognised by the functions "
    "it defines, whatever its name."
)


def build(out: Path, preset: str, track: str) -> Path:
    """Write ``out``, the autograder zip for ``preset`` and ``track``."""
    from checkers.grading.release import release

    if track not in GRADED_TRACKS:
        raise ValueError(f"--track {track!r}: core or full")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        src = release(Path(tmp) / "source")
        (src / SETTINGS).write_text(json.dumps({"preset": preset, "track": track}))
        (src / "setup.sh").write_text(SETUP_SH)
        (src / "run_autograder").write_text(RUN_AUTOGRADER)
        partial = out.with_name(out.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(src.rglob("*")):
                if path.is_file() and path.name != ".complete":  # the release folder's own marker
                    info = zipfile.ZipInfo.from_file(path, str(path.relative_to(src)))
                    executable = path.name in ("setup.sh", "run_autograder")
                    info.external_attr = (0o100755 if executable else 0o100644) << 16
                    z.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
        os.replace(partial, out)
    return out


def setup(preset: str) -> None:
    """The preset's base model and data, built into the cache (once, at image build time)."""
    from cptlab.core.config import get_config
    from cptlab.data.wiki_sample import data_dir
    from cptlab.model.measure import resolve_base_model

    cfg = get_config(preset)
    print(f"base model: {resolve_base_model(cfg, progress=False)}")
    if cfg.base_model is None:
        print(f"data: {data_dir()}")


def _learner_id(root: Path) -> str:
    """The submitter's Gradescope id (their seed follows from it), else ``submission``."""
    try:
        users = json.loads((root / "submission_metadata.json").read_text()).get("users") or []
        uid = str(users[0].get("id") or users[0].get("email") or "")
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        uid = ""
    uid = re.sub(r"[^A-Za-z0-9_.-]", "_", uid).strip("._")
    return f"gs-{uid}" if uid else "submission"


def _test(name: str, score: float, max_score: float, output: str, status: str | None = None) -> dict:
    t = {"name": name, "score": round(float(score), 2), "max_score": float(max_score), "output": output}
    t["visibility"] = "visible"
    if status:
        t["status"] = status
    return t


def results_of(result, track: str, seconds: float, notes: list[str]) -> dict:
    """Gradescope's results.json for one graded learner."""
    from checkers.grading.gradebook import _report_from

    reports = {d.get("question"): d for d in result.reports}
    tests = []
    for q in QUESTIONS.values():
        if q.track not in GRADED_TRACKS[track]:
            continue
        where = f"{STEP_NOTEBOOKS[q.step]}, {'Go further' if q.track != 'core' else 'core'}"
        if q.kind == "written":
            weight = q.points // RUBRIC_MAX
            tests.append(
                _test(
                    f"{q.id} {q.title} (written, {q.points} points)",
                    0,
                    0,
                    f"Graded by hand by your instructor with the rubric (0-{RUBRIC_MAX}, times {weight}); {where}.",
                )
            )
            continue
        d = reports.get(q.id)
        text = str(_report_from(d)) if d else "not graded: its notebook did not run"
        got = result.points.get(q.id, 0.0)
        tests.append(
            _test(f"{q.id} {q.title} ({where})", got, q.points, text, "passed" if got >= q.points else "failed")
        )
    run = "\n".join(f"{n}: {s}" for n, s in result.status.items())
    output = "How your notebooks ran:\n" + run
    if result.notices or notes:
        output += "\n\nNotes:\n" + "\n".join([*result.notices, *notes])
    return {
        "score": round(sum(t["score"] for t in tests), 2),
        "execution_time": int(round(seconds)),
        "output": output,
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {"flags": result.flags, "seed": result.seed, "preset": result.preset, "track": track},
    }


def run(root: Path, preset: str, track: str) -> dict:
    """Grade ``root/submission`` and write ``root/results/results.json``."""
    from checkers.grading.classroom import grade_class

    t0 = time.perf_counter()
    root = Path(root)
    found, notes = find_notebooks(root / "submission") if (root / "submission").is_dir() else ({}, [])
    if not found:
        results = {
            "score": 0.0,
            "execution_time": int(round(time.perf_counter() - t0)),
            "output": UPLOAD + ("\n\n" + "\n".join(notes) if notes else ""),
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "tests": [],
        }
    else:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            learner = Path(tmp) / "class" / _learner_id(root)
            learner.mkdir(parents=True)
            for step, path in found.items():
                shutil.copyfile(path, learner / STEP_NOTEBOOKS[step])
                if path.name != STEP_NOTEBOOKS[step]:
                    notes.append(f"{path.relative_to(root / 'submission')} graded as {STEP_NOTEBOOKS[step]}")
            (result,) = grade_class(learner.parent, preset, Path(tmp) / "grades", jobs=1, track=track)
            results = results_of(result, track, time.perf_counter() - t0, notes)
    write_atomic(root / "results" / "results.json", json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checkers.grading.gradescope")
    p.add_argument("action", choices=("setup", "run"))
    p.add_argument("--settings", required=True, help="the zip's cptlab_autograder.json (preset and track)")
    p.add_argument("--root", default=os.environ.get(ROOT_ENV, "/autograder"))
    args = p.parse_args(argv)
    settings = json.loads(Path(args.settings).read_text())
    if args.action == "setup":
        setup(settings["preset"])
        return 0
    results = run(Path(args.root), settings["preset"], settings["track"])
    print(
        f"score {results['score']:g}; {len(results['tests'])} tests -> {Path(args.root) / 'results' / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
