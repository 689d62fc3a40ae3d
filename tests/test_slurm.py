"""A class graded on a real Slurm cluster: a single-node cluster of the test's own (munged, slurmctld,
slurmd in a temp folder, on loopback, stopped by their pids), the generated job array of two shards
and the merge that depends on it. The merged gradebook equals one machine's grade-class of the same
class; a task cancelled half-way and submitted again grades only the learner it had not finished."""

import csv
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from learner_sources import MEAN_OF_PPL

from checkers.grading.classroom import grade_class
from checkers.grading.slurm import SlurmJob, write_slurm
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import NOTEBOOK_DIR, SOLUTION_DIR

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
MISSING = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING) or os.geteuid() != 0,
        reason=f"Slurm's test cluster needs slurm-wlm and munge from Debian (missing: {', '.join(MISSING)}) "
        "and root to run its daemons: `apt-get install slurm-wlm munge` (.ci/run does)"
        if MISSING
        else "Slurm's test cluster runs its daemons as root",
    ),
]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what, check, seconds: float, every: float = 0.5):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (got := check()) is not None:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds:g} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd for this test alone; SLURM_CONF set while it lasts."""
    d = tmp_path_factory.mktemp("slurm")
    (d / "munge").mkdir(mode=0o700)
    (d / "state").mkdir()
    (d / "spool").mkdir()
    key, sock = d / "munge" / "munge.key", d / "munge" / "munge.sock"
    subprocess.run([_exe("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
    host = socket.gethostname().split(".")[0]
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20) - 1024
    conf = d / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=cptlabtest",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                f"AuthInfo=socket={sock}",
                "CredType=cred/munge",
                f"StateSaveLocation={d / 'state'}",
                f"SlurmdSpoolDir={d / 'spool'}",
                f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                f"SlurmdPidFile={d / 'slurmd.pid'}",
                f"SlurmctldLogFile={d / 'slurmctld.log'}",
                f"SlurmdLogFile={d / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/backfill",
                "ReturnToService=2",
                "MpiDefault=none",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
                f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    started = []
    try:
        munge_args = ["-F", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d / 'munge' / 'pid'}"]
        munge_args += [f"--log-file={d / 'munge' / 'log'}", f"--seed-file={d / 'munge' / 'seed'}"]
        for cmd in ([_exe("munged"), *munge_args], [_exe("slurmctld"), "-D", "-i"], [_exe("slurmd"), "-D"]):
            started.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(d / f"{Path(cmd[0]).name}.err", "w"))
            )
            if Path(cmd[0]).name == "munged":
                _wait("munged's socket", lambda: True if sock.exists() else None, 20)
        state = lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()  # noqa: E731
        _wait("the node idle", lambda: True if state() == "idle" else None, 60)
        yield d
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
        for proc in reversed(started):  # slurmd, slurmctld, munged: each by the pid this test started
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


def _class(root: Path) -> Path:
    """ada: the core's answers; bo: the same with a mean of per-window perplexities; cy: notebooks 1
    and 2 alone. Sorted, shard 1 of 2 holds ada and cy, shard 2 bo."""
    sub = root / "submissions"

    def core(name):
        student, sol = (
            nbformat.read(NOTEBOOK_DIR / name, as_version=4),
            nbformat.read(SOLUTION_DIR / name, as_version=4),
        )
        by_id = {c.id: c for c in sol.cells}
        for cell in student.cells:
            tags = set(cell.metadata.get("tags", []))
            if {"solution", "answer"} & tags and "go-further" not in tags:
                cell.source = by_id[cell.id].source
        return student

    for learner, names in (
        ("ada", list(STEP_NOTEBOOKS.values())),
        ("bo", list(STEP_NOTEBOOKS.values())),
        ("cy", list(STEP_NOTEBOOKS.values())[:2]),
    ):
        (sub / learner).mkdir(parents=True)
        for name in names:
            nb = core(name)
            if learner == "bo" and name == STEP_NOTEBOOKS[1]:
                next(
                    c for c in nb.cells if c.cell_type == "code" and "def corpus_perplexity(" in c.source
                ).source = MEAN_OF_PPL
            nbformat.write(nb, sub / learner / name)
    return sub


def _submit(paths, tasks: str | None = None) -> tuple[str, str]:
    out = subprocess.run(
        ["bash", str(paths["submit"]), *([tasks] if tasks else [])], capture_output=True, text=True, check=True
    )
    _, array, _, merge = out.stdout.split()
    return array, merge


def _state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout.strip()
    return out


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_a_class_graded_as_a_slurm_array_merges_into_the_one_machine_gradebook(cluster, tmp_path):
    sub = _class(tmp_path)
    out = tmp_path / "grades"
    paths = write_slurm(SlurmJob(sub, out, "smoke", shards=2, jobs=1, notebook_gib=6, check_gib=3, timeout=600))
    script = paths["grade"].read_text()
    assert "#SBATCH --array=1-2" in script and '--shard "$SLURM_ARRAY_TASK_ID/2"' in script and "--mem=" in script
    assert "--dependency=afterok:$array" in paths["submit"].read_text()

    array, merge = _submit(paths)
    first = out / "shards" / "1" / "learners" / "ada.json"
    _wait("shard 1's first learner", lambda: True if first.is_file() else None, 900)
    subprocess.run(["scancel", f"{array}_1"], check=True)  # cancelled while it grades its second learner, cy
    _wait("shard 2 done", lambda: True if (out / "shards" / "2" / "grades.csv").is_file() else None, 900)
    assert not (out / "shards" / "1" / "learners" / "cy.json").exists()
    _wait(
        "the merge to give up on the cancelled array",
        lambda: True if "DependencyNeverSatisfied" in _state(merge) or not _state(merge) else None,
        60,
    )
    subprocess.run(["scancel", merge], capture_output=True)
    kept = first.stat().st_mtime_ns

    again, merge2 = _submit(paths, "1")  # task 1 alone, then a new merge
    _wait(
        "the merge after the re-submitted task",
        lambda: True if not _state(merge2) and (out / "grades.csv").is_file() else None,
        900,
    )
    assert first.stat().st_mtime_ns == kept  # ada was not graded again
    log = next((out / "slurm" / "logs").glob(f"grade-{again}_1.log")).read_text()
    assert "1 of 2 learner(s) graded by an earlier run: kept" in log and "cy graded" in log and "ada graded" not in log
    merged = _rows(out / "grades.csv")
    assert [r["learner"] for r in merged] == ["ada", "bo", "cy"]

    one = tmp_path / "one-machine"
    grade_class(sub, "smoke", one, jobs=2, timeout=600)
    assert merged == _rows(one / "grades.csv")
    assert float(merged[0]["core_auto"]) == 91 and float(merged[1]["core_auto"]) < 91  # the grades mean something
