"""A class graded on a Slurm cluster: ``python -m checkers slurm SUBMISSIONS --shards N --out GRADES``
writes what an instructor submits, in ``GRADES/slurm/``:

- ``grade.sbatch``: a job array of N tasks; task K runs ``grade-class --shard K/N`` into
  ``GRADES/shards/K``. N is written into the script, not read from ``SLURM_ARRAY_TASK_COUNT``, so a
  task re-submitted alone (``--array=K``) still grades the K-th of N slices; it keeps the learners
  its folder already holds and grades only the missing ones.
- ``merge.sbatch``: ``merge-shards`` of the N folders into ``GRADES`` (grades.csv, rubric.csv,
  grades.json, feedback/), submitted to run once every task of the array has succeeded
  (``--dependency=afterok:<array>``).
- ``submit.sh``: both submissions; ``bash submit.sh 3,7`` re-submits tasks 3 and 7 and a new merge.

Each task asks for the cores and memory its ``--jobs`` learners need at once: a core a learner (or
``--cores-per-learner``), and ``jobs`` notebook caps plus the grader's share
(``machine_limits.memory_for``), the caps passed to ``grade-class`` so that they fit the allocation.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from checkers.grading.machine_limits import CHECK_MAX, GiB, memory_for

DEFAULT_NOTEBOOK_GIB = 8.0  # a smoke or tiny notebook needs far less; gpt2 on a GPU node: ask for 16


@dataclass(frozen=True)
class SlurmJob:
    submissions: Path
    out: Path
    preset: str = "tiny"
    shards: int = 2
    jobs: int = 1
    track: str = "core"
    cores_per_learner: int = 1
    notebook_gib: float = DEFAULT_NOTEBOOK_GIB
    check_gib: float = CHECK_MAX / GiB
    timeout: float = 900.0
    partition: str | None = None
    time_limit: str | None = None  # sbatch --time, e.g. 04:00:00
    python: str = sys.executable

    @property
    def cpus(self) -> int:
        return self.jobs * self.cores_per_learner

    @property
    def mem_mb(self) -> int:
        cap = int(max(self.notebook_gib, self.check_gib) * GiB)
        return -(-memory_for(self.jobs, cap) // (1 << 20))


def _header(job: SlurmJob, name: str, extra: list[str]) -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", *[f"#SBATCH {x}" for x in extra]]
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time_limit:
        lines.append(f"#SBATCH --time={job.time_limit}")
    return "\n".join(lines) + "\n"


def write_slurm(job: SlurmJob) -> dict[str, Path]:
    """Write the array, the merge and the submit script; return their paths."""
    if job.shards < 1 or job.jobs < 1:
        raise ValueError("--shards and --jobs must be at least 1")
    out, sub = Path(job.out).resolve(), Path(job.submissions).resolve()
    if not sub.is_dir():
        raise ValueError(f"{sub} is not a folder of learner folders")
    folder, logs = out / "slurm", out / "slurm" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    grade = [
        q(job.python), "-m", "checkers", "grade-class", q(str(sub)),
        "--preset", q(job.preset), "--track", q(job.track), "--jobs", str(job.jobs),
        "--timeout", f"{job.timeout:g}", "--notebook-memory", f"{job.notebook_gib:g}", "--memory", f"{job.check_gib:g}",
        "--shard", f'"$SLURM_ARRAY_TASK_ID/{job.shards}"', "--out", f'{q(str(out / "shards"))}/"$SLURM_ARRAY_TASK_ID"',
    ]  # fmt: skip
    array = _header(
        job,
        "cptlab-grade",
        [
            f"--array=1-{job.shards}",
            "--ntasks=1",
            f"--cpus-per-task={job.cpus}",
            f"--mem={job.mem_mb}M",
            f"--output={logs}/grade-%A_%a.log",
        ],
    )
    array += (
        f"# Task K grades the K-th of {job.shards} slices of the class into shards/K; re-run alone\n"
        "# (sbatch --array=K grade.sbatch, or bash submit.sh K) it keeps what that folder already holds.\n"
        "set -euo pipefail\n"
        f"cd {q(str(out))}\n"
        f"exec {' '.join(grade)}\n"
    )
    shard_dirs = " ".join(q(str(out / "shards" / str(k))) for k in range(1, job.shards + 1))
    merge = _header(
        job, "cptlab-merge", ["--ntasks=1", "--cpus-per-task=1", "--mem=2G", f"--output={logs}/merge-%j.log"]
    )
    merge += f"set -euo pipefail\nexec {q(job.python)} -m checkers merge-shards {shard_dirs} --out {q(str(out))}\n"
    submit = (
        "#!/bin/bash\n"
        "# bash submit.sh        the whole class: the array, then the merge once every task has succeeded\n"
        "# bash submit.sh 3,7    tasks 3 and 7 again (each keeps the learners it already graded), then the merge\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        'array=$(sbatch --parsable ${1:+--array="$1"} grade.sbatch)\n'
        "array=${array%%;*}\n"
        "merge=$(sbatch --parsable --dependency=afterok:$array merge.sbatch)\n"
        "merge=${merge%%;*}\n"
        'echo "array $array merge $merge"\n'
    )
    paths = {"grade": folder / "grade.sbatch", "merge": folder / "merge.sbatch", "submit": folder / "submit.sh"}
    for key, text in (("grade", array), ("merge", merge), ("submit", submit)):
        paths[key].write_text(text)
        paths[key].chmod(0o755)
    return paths
