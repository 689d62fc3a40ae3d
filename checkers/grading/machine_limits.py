"""Memory caps that fit the machine: ``grade-class --jobs N`` runs N learners at once, each running
one notebook or one check process at a time, so each of those may have at most an N-th of what the
machine has, less the grader's own share. A cap asked for above that is refused (unless forced):
otherwise two notebooks could ask for more than the machine holds, and the kernel's OOM killer, not
the grader, would decide which learner loses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
NOTEBOOK_MAX = 16 * GiB  # enough for the gpt2 preset's notebooks on one GPU sandbox
CHECK_MAX = 4 * GiB  # one learner function's check: small random models
# Kept for the grader itself and the system: the judge's and executor's own processes, page cache.
RESERVE_MIN, RESERVE_SHARE = 2 * GiB, 0.10
# What a learner whose process ran out of its address space shows (numpy, torch's allocator, C++).
OUT_OF_MEMORY = re.compile(
    r"MemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc|out of memory", re.IGNORECASE
)


class MemoryCapError(ValueError):
    """A cap asked for that the machine cannot give every job at once."""


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2, then v1), if one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def machine_memory() -> int:
    """Bytes of memory this machine has for the grader: the least of its RAM, its container's limit
    and, inside a Slurm job, the job's allocation (``--mem``: SLURM_MEM_PER_NODE, in MiB)."""
    sizes = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    if (limit := _cgroup_limit()) is not None:
        sizes.append(limit)
    if os.environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        sizes.append(int(os.environ["SLURM_MEM_PER_NODE"]) << 20)
    return min(sizes)


@dataclass(frozen=True)
class Caps:
    notebook: int
    check: int
    per_job: int
    machine: int
    jobs: int

    def describe(self) -> str:
        return (
            f"memory caps: {self.notebook / GiB:.1f} GiB of address space per notebook, {self.check / GiB:.1f} GiB "
            f"per function check ({self.jobs} learner(s) at once on {self.machine / GiB:.1f} GiB, "
            f"{reserve(self.machine) / GiB:.1f} GiB kept for the grader)"
        )


def reserve(machine: int) -> int:
    return max(RESERVE_MIN, int(RESERVE_SHARE * machine))


def memory_for(jobs: int, cap: int) -> int:
    """The memory to ask a scheduler for so that ``jobs`` processes of ``cap`` each fit beside the
    grader's share: the smallest M with (M - reserve(M)) / jobs >= cap."""
    need = max(1, jobs) * cap
    return max(need + RESERVE_MIN, -(-need * 10 // 9))


def memory_caps(
    jobs: int,
    notebook: int | None = None,
    check: int | None = None,
    force: bool = False,
    machine: int | None = None,
) -> Caps:
    """The caps for ``jobs`` learners at once: each asked-for cap as given if it fits an N-th of the
    machine (less the grader's share), the default capped to it; above it, an error unless ``force``."""
    machine = machine or machine_memory()
    jobs = max(1, jobs)
    per_job = (machine - reserve(machine)) // jobs
    if per_job < GiB:
        raise MemoryCapError(
            f"{machine / GiB:.1f} GiB shared by --jobs {jobs} leaves {per_job / GiB:.2f} GiB a learner: "
            "use fewer --jobs"
        )
    caps = {}
    for name, asked, default, flag in (
        ("notebook", notebook, NOTEBOOK_MAX, "--notebook-memory"),
        ("check", check, CHECK_MAX, "--memory"),
    ):
        if asked is None:
            caps[name] = min(default, per_job)
        elif asked > per_job and not force:
            raise MemoryCapError(
                f"{flag} {asked / GiB:g} GiB with --jobs {jobs}: {jobs} x {asked / GiB:g} GiB is more than this "
                f"machine's {machine / GiB:.1f} GiB less {reserve(machine) / GiB:.1f} GiB for the grader; use "
                f"{flag} {per_job / GiB:.1f} or less, fewer --jobs, or --force-memory to take the risk"
            )
        else:
            caps[name] = asked
    return Caps(caps["notebook"], caps["check"], per_job, machine, jobs)


def over_memory(message: str, cap: int) -> str | None:
    """``message`` read as a learner's process out of its address space: what its row says, else None."""
    if not OUT_OF_MEMORY.search(message):
        return None
    return f"over its memory limit ({cap / GiB:.1f} GiB of address space): {message.strip()[:160]}"
