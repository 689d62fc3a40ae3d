"""Where a learner's notebook runs: a bubblewrap sandbox (read-only file system but the run
folder, no network, its own process tree), its environment, and the headless execution under a
wall-clock limit and a memory cap.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from checkers.grading.judge import cap_process
from checkers.grading.machine_limits import over_memory

REPO = Path(__file__).resolve().parents[2]


HIDDEN = (REPO / "notebooks" / "solutions", REPO / "notebooks" / "src", REPO / "checkers")


@functools.lru_cache(maxsize=1)
def usable_bwrap() -> str | None:
    """``bwrap`` if it is installed and can make its namespaces here: in a container without the
    privilege to (Docker's default, a course platform's grader) it exits at once, and every notebook
    would fail with it; the limits still hold without it."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    probe = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid", "true"]
    try:
        ok = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        print(
            "[grade-class] bubblewrap is installed but cannot create its namespaces here: no sandbox", file=sys.stderr
        )
    return exe if ok else None


@dataclass
class Sandbox:
    """How learner code runs: ``bwrap`` when installed and usable (else a plain subprocess), always
    under the memory cap and with its own process group."""

    bwrap: str | None = field(default_factory=usable_bwrap)

    def wrap(self, cmd: list[str], run_dir: Path, shared: Path, hide: tuple[Path, ...] = ()) -> list[str]:
        """``run_dir`` writable, everything else read-only (``shared``, the cache with the base model
        and data, included; the lab's own files may live under /tmp, so /tmp stays visible); the
        solutions, the notebook sources, the grader's package and ``hide`` (the class's folders)
        replaced by empty folders."""
        if not self.bwrap:
            return cmd
        masks = []
        for path in (*HIDDEN, *hide):
            if path.exists():
                masks += ["--tmpfs", str(path)]
        caps = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []  # root outside is no one special inside
        return [
            self.bwrap,
            *caps,
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            *masks,
            "--ro-bind",
            str(shared),
            str(shared),
            "--bind",
            str(run_dir),
            str(run_dir),
            "--unshare-net",
            "--unshare-pid",
            "--die-with-parent",
            "--chdir",
            str(run_dir),
            *cmd,
        ]

    @property
    def name(self) -> str:
        return (
            "bwrap (read-only but the run folder, no network, solutions and grader hidden)"
            if self.bwrap
            else "none (bubblewrap not installed, or not usable here)"
        )


def learner_env(run_dir: Path, cache: Path, threads: int) -> dict[str, str]:
    """A learner's process sees its run folder as home, temp and cache; the shared base model and
    data are linked in, read-only inside the sandbox."""
    home = run_dir / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    own_cache = run_dir / "cache"
    own_cache.mkdir(exist_ok=True)
    for shared in cache.glob("tiny-*"):
        link = own_cache / shared.name
        if not link.exists():
            link.symlink_to(shared)
    keep = {
        k: v
        for k, v in os.environ.items()
        if k
        in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "HF_HOME", "HF_HUB_CACHE", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    return {
        **keep,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "CPTLAB_CACHE": str(own_cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "CPTLAB_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def execute(
    src: Path,
    dst: Path,
    params: dict,
    run_dir: Path,
    env: dict,
    timeout: float,
    sandbox: Sandbox,
    shared: Path,
    hide: tuple[Path, ...] = (),
    memory_bytes: int = 16 << 30,
) -> str | None:
    """Run one merged notebook; None when it ran to its end, else why not (time-out or error)."""
    cmd = sandbox.wrap(
        [sys.executable, "-m", "cptlab.notebook.execute", str(src), str(dst), json.dumps(params)], run_dir, shared, hide
    )
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=cap_process(memory_bytes),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"time-out after {timeout:g} s"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.startswith("error: ")]
    last = [ln.strip() for ln in err.splitlines() if ln.strip()]
    why = lines[-1] if lines else f"error: exit status {proc.returncode}" + (f" ({last[-1][:160]})" if last else "")
    over = over_memory(why[len("error: ") :] if lines else err[-2000:], memory_bytes)
    return f"error: {over}" if over else why
