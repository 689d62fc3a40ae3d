"""``python -m checkers grade RUN_DIR [RUN_DIR ...] [--csv FILE] [--json FILE]``.

A table per run and step, a gradebook with one row per run folder, exit status 1 when any check
fails. Grading reads JSON only: it never executes learner code and never unpickles anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from checkers.core.questions import track_points
from checkers.core.report import Check, Report
from checkers.results.steps import check_all
from cptlab.core.files import write_atomic


def grade(
    run_dirs: list[str], verify: bool = False, preset: str | None = None, retrain: bool = False
) -> tuple[list[dict], str]:
    rows, out = [], io.StringIO()
    for run in run_dirs:
        try:
            if not Path(run).is_dir():  # the folder named on the command line; what it holds is not trusted
                raise NotADirectoryError(f"{run} is not a run folder")
            reports = check_all(run, preset)
            if verify:
                from checkers.verify.verify import verify as verify_run

                reports.append(verify_run(run, preset, retrain))
        except Exception as exc:  # one broken folder is that folder's failed row, never the class's end
            reports = [
                Report(
                    0,
                    "grading",
                    str(run),
                    None,
                    [
                        Check(
                            "grade.error",
                            False,
                            "a gradable run folder",
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                            "hand in the run folder the lab wrote, unchanged",
                        )
                    ],
                )
            ]
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
        rows.append(
            {
                "run_dir": str(run),
                "preset": next((r.preset for r in reports if r.preset), None),
                **{f"step{r.step}_points": r.points for r in reports},
                **{f"step{r.step}_max": r.max_points for r in reports},
                "total": total,
                "max": total_max,
                "passed": all(r.passed for r in reports),
                "failed_checks": " ".join(c.id for r in reports for c in r.failures),
                "reports": [r.to_dict() for r in reports],
            }
        )
    return rows, out.getvalue()


def summarize(run: Path, track: str = "full") -> int:
    """What ``cptlab lab`` shows after the notebooks ran: the checks of the results files, the points
    the notebooks' check cells recorded (of the ``track`` run), and the run's one page. Exit 0 only
    if nothing was lost."""
    from checkers.results.score import complete, format_scores, score_notebooks
    from cptlab.lab.page import write_index
    from cptlab.lab.steps import format_table, summary_rows

    rows, text = grade([str(run)])
    scores = score_notebooks(run)
    points = format_scores(scores, track)
    print(text.rstrip())
    print("\nPoints from the executed notebooks:\n" + points)
    page = write_index(run, format_table(summary_rows(run)), text.strip(), points)
    print(f"\none page:    {page} (the notebooks, plots and grades, for a browser)")
    print(f"grade again: python -m checkers grade {run}")
    return 0 if rows[0]["passed"] and complete(scores, track) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checkers", description="Grade lab run folders.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="check every step of each run folder; exit 1 if any check fails")
    g.add_argument("run_dirs", nargs="+")
    g.add_argument("--csv", help="write the gradebook (one row per run folder) as CSV")
    g.add_argument("--json", help="write the gradebook with every check as JSON")
    g.add_argument(
        "--preset",
        help="the preset the runs must have been made with (its thresholds apply); "
        "default: the one each results file names",
    )
    g.add_argument(
        "--verify",
        action="store_true",
        help="also re-hash the run's files and re-evaluate with the preset's base model and data",
    )
    g.add_argument(
        "--retrain",
        action="store_true",
        help="with --verify: also re-run the CPT step from the preset's recipe "
        "and the recorded seed, and compare the log and the perplexities",
    )
    c = sub.add_parser(
        "grade-class",
        help="re-execute each learner's answer cells in pristine notebooks; a gradebook, "
        "a rubric sheet and a feedback page per learner",
    )
    c.add_argument(
        "submissions", help="a folder with one folder per learner (its name is the learner id) holding the notebooks"
    )
    c.add_argument("--preset", default="tiny", help="the instructor's preset (default tiny)")
    c.add_argument("--out", required=True, help="where grades.csv, rubric.csv, feedback/ and the learners' runs go")
    c.add_argument("--jobs", type=int, default=1, help="learners graded at once")
    c.add_argument(
        "--track",
        choices=("core", "full"),
        default="core",
        help="core: the core's 100 points (default; Go further's cells left out of the runs); "
        "full: the core and Go further, each its own points",
    )
    c.add_argument("--timeout", type=float, default=900, help="seconds each notebook may run (default 900)")
    c.add_argument(
        "--question-timeout",
        type=float,
        default=120,
        help="seconds each learner function's check may run, its process's start included (default 120)",
    )
    c.add_argument(
        "--memory",
        type=float,
        help="GiB of address space for each function's check (default 4, less where --jobs learners at once "
        "would not fit the machine)",
    )
    c.add_argument(
        "--notebook-memory",
        type=float,
        help="GiB of address space for each notebook run (default: 16, or the machine's memory less the grader's "
        "share divided by --jobs where that is less)",
    )
    c.add_argument(
        "--force-memory",
        action="store_true",
        help="accept --memory / --notebook-memory above what --jobs learners at once can have on this machine",
    )
    c.add_argument(
        "--shard",
        default="1/1",
        help="K/N: grade only the K-th of N deterministic slices of the class "
        "(one task of a scheduler's array job); join the slices with merge-shards",
    )
    gs = sub.add_parser(
        "gradescope", help="build a Gradescope autograder zip (setup.sh, run_autograder, the lab without solutions)"
    )
    gs.add_argument("--preset", default="tiny", help="the preset the autograder grades with (default tiny)")
    gs.add_argument("--track", choices=("core", "full"), default="core", help="what it grades (default core)")
    gs.add_argument("--out", default="autograder.zip", help="the zip to write (default autograder.zip)")
    sl = sub.add_parser(
        "slurm", help="write a Slurm job array that grades a class in shards, and the merge that runs after it"
    )
    sl.add_argument("submissions", help="the class's folder: one folder per learner")
    sl.add_argument("--out", required=True, help="the gradebook's folder (scripts in OUT/slurm, shards in OUT/shards)")
    sl.add_argument("--preset", default="tiny")
    sl.add_argument("--track", choices=("core", "full"), default="core")
    sl.add_argument("--shards", type=int, default=2, help="array tasks: the class cut into this many slices")
    sl.add_argument("--jobs", type=int, default=1, help="learners each task grades at once")
    sl.add_argument("--cores-per-learner", type=int, default=1)
    sl.add_argument("--notebook-memory", type=float, default=8.0, help="GiB per notebook (each task asks for --jobs x)")
    sl.add_argument("--memory", type=float, default=4.0, help="GiB per function check")
    sl.add_argument("--timeout", type=float, default=900, help="seconds each notebook may run")
    sl.add_argument("--partition")
    sl.add_argument("--time", help="each task's sbatch --time, e.g. 04:00:00")
    ms = sub.add_parser("merge-shards", help="join the gradebooks of grade-class --shard runs into one")
    ms.add_argument("shard_dirs", nargs="+", help="the --out folders of the shards")
    ms.add_argument(
        "--out", required=True, help="the folder for the joined grades.csv, rubric.csv, grades.json and feedback/"
    )
    sm = sub.add_parser(
        "summarize",
        help="what `cptlab lab` prints after the notebooks ran: checks, notebook points, "
        "the run's index.html; exit 1 if any point was lost",
    )
    sm.add_argument("run_dir")
    sm.add_argument("--track", choices=("full", "core"), default="full", help="the track the run executed")
    rl = sub.add_parser(
        "release", help="write what learners receive: student notebooks, library, checks, learner README"
    )
    rl.add_argument("--out", default="release", help="the folder to write (default release/)")
    m = sub.add_parser("merge-rubric", help="add the filled rubric sheet's scores to the gradebook (grades_final.csv)")
    m.add_argument("grades_dir")
    m.add_argument("--rubric", help="the filled rubric sheet (default GRADES_DIR/rubric.csv)")
    args = p.parse_args(argv)
    if args.command == "grade-class":
        from checkers.grading.classroom import grade_class
        from checkers.grading.judge import GiB, Limits

        try:
            k, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            p.error(f"--shard {args.shard!r}: write K/N, e.g. --shard 3/10")
        from checkers.grading.machine_limits import MemoryCapError, memory_caps

        try:
            check = int(args.memory * GiB) if args.memory else memory_caps(args.jobs).check  # asked, or the default
            results = grade_class(
                Path(args.submissions),
                args.preset,
                Path(args.out),
                args.jobs,
                args.timeout,
                Limits(args.question_timeout, check),
                int(args.notebook_memory * GiB) if args.notebook_memory else None,
                (k, n),
                args.track,
                args.force_memory,
            )
        except MemoryCapError as exc:
            print(f"grade-class: {exc}", file=sys.stderr)
            return 2
        for r in results:
            further = (
                f"  go further {r.auto('go-further'):>5g}/{track_points('go-further', 'auto')}"
                if args.track == "full"
                else ""
            )
            print(
                f"{r.learner:<24} core {r.auto('core'):>5g}/{track_points('core', 'auto')}{further}  {r.execution}"
                + (f"  [{'; '.join(r.flags)}]" if r.flags else "")
            )
        print(
            f"\ngradebook {Path(args.out) / 'grades.csv'}; rubric sheet {Path(args.out) / 'rubric.csv'}; "
            f"feedback pages {Path(args.out) / 'feedback'}"
        )
        return 0
    if args.command == "slurm":
        from checkers.grading.slurm import SlurmJob, write_slurm

        paths = write_slurm(
            SlurmJob(
                Path(args.submissions),
                Path(args.out),
                args.preset,
                args.shards,
                args.jobs,
                args.track,
                args.cores_per_learner,
                args.notebook_memory,
                args.memory,
                args.timeout,
                args.partition,
                args.time,
            )
        )
        print(f"wrote {paths['grade']}, {paths['merge']} and {paths['submit']}; submit with: bash {paths['submit']}")
        return 0
    if args.command == "gradescope":
        from checkers.grading.gradescope import build

        out = build(Path(args.out), args.preset, args.track)
        print(f"{out}: upload it as the assignment's autograder (Gradescope: Configure Autograder, zip file)")
        return 0
    if args.command == "release":
        from checkers.grading.release import release

        out = release(Path(args.out))
        print(f"{out}: the student notebooks, cptlab/, checkers/ and the learner README; hand this folder to the class")
        return 0
    if args.command == "summarize":
        return summarize(Path(args.run_dir), args.track)
    if args.command == "merge-shards":
        from checkers.grading.classroom import merge_shards

        rows = merge_shards([Path(d) for d in args.shard_dirs], Path(args.out))
        print(f"{len(rows)} learner(s) from {len(args.shard_dirs)} shard(s) -> {Path(args.out) / 'grades.csv'}")
        return 0
    if args.command == "merge-rubric":
        from checkers.grading.classroom import merge_rubric

        rows = merge_rubric(Path(args.grades_dir), Path(args.rubric) if args.rubric else None)
        print(f"{len(rows)} learner(s) -> {Path(args.grades_dir) / 'grades_final.csv'}")
        return 0

    rows, text = grade(args.run_dirs, verify=args.verify or args.retrain, preset=args.preset, retrain=args.retrain)
    print(text.strip("\n"))
    print(f"\n{sum(r['passed'] for r in rows)}/{len(rows)} run(s) passed every check")
    if args.csv:
        buf = io.StringIO()
        fields = [k for k in rows[0] if k != "reports"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_atomic(Path(args.csv), buf.getvalue())
    if args.json:
        write_atomic(Path(args.json), json.dumps(rows, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
